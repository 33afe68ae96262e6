// Minimal streaming generator for an slmkit bundle on iOS (onnxruntime-genai Objective-C API).
#import <Foundation/Foundation.h>

NS_ASSUME_NONNULL_BEGIN

@interface SlmkitRunner : NSObject

/// Every EOS id of the model (genai_config.json); generation stops at any of them.
@property(nonatomic, readonly) NSSet<NSNumber*>* eosIds;
/// The bundle's context cap (search.max_length in genai_config.json).
@property(nonatomic, readonly) NSInteger maxLength;

/// Loads `<bundle>/model`. Returns nil and sets `error` when the model cannot be loaded.
- (nullable instancetype)initWithModelPath:(NSString*)modelPath error:(NSError**)error;

/// The user message in the model's chat format (Phi-3 format when the model has no template).
- (NSString*)formatChat:(NSString*)message;

- (nullable NSArray<NSNumber*>*)encode:(NSString*)text error:(NSError**)error;
- (nullable NSString*)decode:(NSArray<NSNumber*>*)ids error:(NSError**)error;

/// Greedy when temperature is 0, else sampling with topP / topK (0 = off) and seed.
/// `onText` (may be nil) receives each piece of text as it is decoded. Stops at an EOS id
/// (not included in the result), after maxNewTokens, or at the context cap.
- (nullable NSArray<NSNumber*>*)generate:(NSArray<NSNumber*>*)promptIds
                            maxNewTokens:(NSInteger)maxNewTokens
                             temperature:(double)temperature
                                    topP:(double)topP
                                    topK:(NSInteger)topK
                                    seed:(NSInteger)seed
                                  onText:(nullable void (^)(NSString* piece))onText
                                   error:(NSError**)error;

/// One greedy chat turn: formats `message`, streams the answer to `onText`, returns it.
- (nullable NSString*)ask:(NSString*)message
             maxNewTokens:(NSInteger)maxNewTokens
                   onText:(nullable void (^)(NSString* piece))onText
                    error:(NSError**)error;

@end

NS_ASSUME_NONNULL_END
