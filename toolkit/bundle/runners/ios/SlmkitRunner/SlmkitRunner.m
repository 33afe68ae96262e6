#import "SlmkitRunner.h"

#import "ort_genai_objc.h"

static NSString* const kPlaceholder = @"{content}";
static NSString* const kErrorDomain = @"slmkit";

@implementation SlmkitRunner {
  OGAModel* _model;
  OGATokenizer* _tokenizer;
  NSString* _promptFormat;
}

- (nullable instancetype)initWithModelPath:(NSString*)modelPath error:(NSError**)error {
  if ((self = [super init]) == nil) return nil;
  OGAConfig* config = [[OGAConfig alloc] initWithPath:modelPath error:error];
  if (config == nil) return nil;
  _model = [[OGAModel alloc] initWithConfig:config error:error];
  if (_model == nil) return nil;
  _tokenizer = [[OGATokenizer alloc] initWithModel:_model error:error];
  if (_tokenizer == nil) return nil;

  NSDictionary* genai = [self readJSON:[modelPath stringByAppendingPathComponent:@"genai_config.json"] error:error];
  if (genai == nil) return nil;
  id eos = genai[@"model"][@"eos_token_id"];  // a list, one id, or absent (no array literal of nil)
  _eosIds = [NSSet setWithArray:([eos isKindOfClass:[NSArray class]] ? eos : (eos != nil ? @[ eos ] : @[]))];
  _maxLength = [genai[@"search"][@"max_length"] integerValue];
  // The model's chat template rendered for one user turn by slmkit at build time.
  NSString* formatPath = [modelPath stringByAppendingPathComponent:@"prompt_format.json"];
  if ([[NSFileManager defaultManager] fileExistsAtPath:formatPath]) {
    NSDictionary* format = [self readJSON:formatPath error:error];
    if (format == nil) return nil;
    _promptFormat = format[@"single_turn"];
  }
  return self;
}

- (nullable NSDictionary*)readJSON:(NSString*)path error:(NSError**)error {
  NSData* data = [NSData dataWithContentsOfFile:path options:0 error:error];
  return data == nil ? nil : [NSJSONSerialization JSONObjectWithData:data options:0 error:error];
}

- (NSString*)formatChat:(NSString*)message {
  if (_promptFormat != nil) {
    return [_promptFormat stringByReplacingOccurrencesOfString:kPlaceholder withString:message];
  }
  return [NSString stringWithFormat:@"<|user|>\n%@<|end|>\n<|assistant|>\n", message];
}

- (nullable NSArray<NSNumber*>*)encode:(NSString*)text error:(NSError**)error {
  OGASequences* sequences = [_tokenizer encode:text error:error];
  if (sequences == nil) return nil;
  const int32_t* data = [sequences sequenceDataAtIndex:0 error:error];
  size_t count = [sequences sequenceCountAtIndex:0 error:error];
  if (data == NULL) return nil;
  NSMutableArray<NSNumber*>* ids = [NSMutableArray arrayWithCapacity:count];
  for (size_t i = 0; i < count; i++) [ids addObject:@(data[i])];
  return ids;
}

- (nullable NSString*)decode:(NSArray<NSNumber*>*)ids error:(NSError**)error {
  NSMutableData* buffer = [NSMutableData dataWithLength:ids.count * sizeof(int32_t)];
  int32_t* data = (int32_t*)buffer.mutableBytes;
  for (NSUInteger i = 0; i < ids.count; i++) data[i] = ids[i].intValue;
  return [_tokenizer decode:data length:ids.count error:error];
}

- (nullable NSArray<NSNumber*>*)generate:(NSArray<NSNumber*>*)promptIds
                            maxNewTokens:(NSInteger)maxNewTokens
                             temperature:(double)temperature
                                    topP:(double)topP
                                    topK:(NSInteger)topK
                                    seed:(NSInteger)seed
                                  onText:(nullable void (^)(NSString* piece))onText
                                   error:(NSError**)error {
  if ((NSInteger)promptIds.count >= _maxLength) {
    if (error) {
      NSString* message = [NSString stringWithFormat:@"The prompt has %lu tokens; this bundle's context cap is %ld. Shorten the prompt.",
                                                     (unsigned long)promptIds.count, (long)_maxLength];
      *error = [NSError errorWithDomain:kErrorDomain code:1 userInfo:@{NSLocalizedDescriptionKey : message}];
    }
    return nil;
  }
  OGAGeneratorParams* params = [[OGAGeneratorParams alloc] initWithModel:_model error:error];
  if (params == nil) return nil;
  double maxLength = (double)MIN(_maxLength, (NSInteger)promptIds.count + maxNewTokens);
  if (![params setSearchOption:@"max_length" doubleValue:maxLength error:error]) return nil;
  if (![params setSearchOption:@"batch_size" doubleValue:1 error:error]) return nil;
  BOOL sample = temperature > 0;
  if (![params setSearchOption:@"do_sample" boolValue:sample error:error]) return nil;
  if (sample) {
    if (![params setSearchOption:@"temperature" doubleValue:temperature error:error]) return nil;
    if (![params setSearchOption:@"top_p" doubleValue:topP error:error]) return nil;
    // Always set: left unset, onnxruntime-genai samples from the top 50; 0 is no limit.
    if (![params setSearchOption:@"top_k" doubleValue:(double)topK error:error]) return nil;
    if (![params setSearchOption:@"random_seed" doubleValue:(double)seed error:error]) return nil;
  }
  OGAGenerator* generator = [[OGAGenerator alloc] initWithModel:_model params:params error:error];
  if (generator == nil) return nil;
  OGATokenizerStream* stream = [[OGATokenizerStream alloc] initWithTokenizer:_tokenizer error:error];
  if (stream == nil) return nil;
  if (![generator appendTokens:promptIds error:error]) return nil;

  NSMutableArray<NSNumber*>* out = [NSMutableArray array];
  // isDoneWithError: returns NO both while generation goes on and on failure: tell them apart.
  NSError* doneError = nil;
  while (![generator isDoneWithError:&doneError]) {
    if (![generator generateNextTokenWithError:error]) return nil;
    size_t count = [generator sequenceCountAtIndex:0 error:error];
    const int32_t* sequence = [generator sequenceDataAtIndex:0 error:error];
    if (sequence == NULL) return nil;
    int32_t token = sequence[count - 1];
    if ([_eosIds containsObject:@(token)]) break;
    [out addObject:@(token)];
    if (onText != nil) {
      NSString* piece = [stream decode:token error:error];
      if (piece == nil) return nil;
      onText(piece);
    }
  }
  if (doneError != nil) {
    if (error) *error = doneError;
    return nil;
  }
  return out;
}

- (nullable NSString*)ask:(NSString*)message
             maxNewTokens:(NSInteger)maxNewTokens
                   onText:(nullable void (^)(NSString* piece))onText
                    error:(NSError**)error {
  NSArray<NSNumber*>* prompt = [self encode:[self formatChat:message] error:error];
  if (prompt == nil) return nil;
  NSArray<NSNumber*>* answer = [self generate:prompt maxNewTokens:maxNewTokens temperature:0 topP:1 topK:0 seed:0 onText:onText error:error];
  return answer == nil ? nil : [self decode:answer error:error];
}

@end
