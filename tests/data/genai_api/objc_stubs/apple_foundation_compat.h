// Prefix header for compiling the iOS runner on Linux against GNUstep's Foundation (the nearest
// real Foundation Debian ships) as if it were Apple's: STUB declarations of the few Apple
// Foundation APIs and macros that GNUstep base 1.28 lacks or defines differently. Passed with
// `clang -include` by tests/test_mobile_compile.py. Extend it (from Apple's documentation) when
// the runner starts using another Apple API that GNUstep does not declare.
#import <Foundation/Foundation.h>

// Apple: nil is a null pointer (usable for NSError** arguments); GNUstep: (id)0 or 0.
#undef nil
#define nil ((void*)0)
// Apple: marks a method unavailable; GNUstep defines it empty, which would accept [[OGAModel alloc] init].
#undef NS_UNAVAILABLE
#define NS_UNAVAILABLE __attribute__((unavailable))
#ifndef NS_SWIFT_NAME
#define NS_SWIFT_NAME(name) __attribute__((swift_name(#name)))
#endif

NS_ASSUME_NONNULL_BEGIN

typedef NS_OPTIONS(NSUInteger, NSDataReadingOptions) {
  NSDataReadingMappedIfSafe = 1UL << 0,
  NSDataReadingUncached = 1UL << 1,
  NSDataReadingMappedAlways = 1UL << 3,
};

@interface NSData (SlmkitAppleFoundationStub)
+ (nullable instancetype)dataWithContentsOfFile:(NSString*)path
                                        options:(NSDataReadingOptions)readOptionsMask
                                          error:(NSError**)errorPtr;
- (nullable instancetype)initWithContentsOfFile:(NSString*)path
                                        options:(NSDataReadingOptions)readOptionsMask
                                          error:(NSError**)errorPtr;
@end

NS_ASSUME_NONNULL_END
