// STUB of Apple's XCTest framework (a platform library, not part of slmkit or onnxruntime-genai),
// only so that tests/test_mobile_compile.py can compile toolkit/runners/ios/SlmkitSmokeTests on
// Linux. Declarations follow Apple's documented API (XCTestCase, XCTAssert* macros); the macros
// type-check their arguments and, like Apple's, take a string-literal format (checked by -Wformat).
// Nothing here is meant to run.
#import <Foundation/Foundation.h>

NS_ASSUME_NONNULL_BEGIN

@interface XCTestCase : NSObject
- (void)setUp;
- (void)tearDown;
@end

void _XCTStubRecord(BOOL passed, NSString* expression, NSString* format, ...) NS_FORMAT_FUNCTION(3, 4);

NS_ASSUME_NONNULL_END

#define XCTFail(...) _XCTStubRecord(NO, @"", @"" __VA_ARGS__)
#define XCTAssert(expression, ...) _XCTStubRecord((expression) ? YES : NO, @#expression, @"" __VA_ARGS__)
#define XCTAssertTrue(expression, ...) XCTAssert(expression, __VA_ARGS__)
#define XCTAssertFalse(expression, ...) _XCTStubRecord((expression) ? NO : YES, @#expression, @"" __VA_ARGS__)
#define XCTAssertNil(expression, ...) _XCTStubRecord((expression) == nil, @#expression, @"" __VA_ARGS__)
#define XCTAssertNotNil(expression, ...) _XCTStubRecord((expression) != nil, @#expression, @"" __VA_ARGS__)
#define XCTAssertEqualObjects(expression1, expression2, ...)                                     \
  _XCTStubRecord([(id)(expression1) isEqual:(id)(expression2)], @#expression1 " == " #expression2, \
                 @"" __VA_ARGS__)
#define _XCTStubCompare(op, expression1, expression2, ...)                              \
  ({                                                                                    \
    __typeof__(expression1) _xct_a = (expression1);                                     \
    __typeof__(expression2) _xct_b = (expression2);                                     \
    _XCTStubRecord(_xct_a op _xct_b, @#expression1 " " #op " " #expression2, @"" __VA_ARGS__); \
  })
#define XCTAssertEqual(expression1, expression2, ...) _XCTStubCompare(==, expression1, expression2, __VA_ARGS__)
#define XCTAssertNotEqual(expression1, expression2, ...) _XCTStubCompare(!=, expression1, expression2, __VA_ARGS__)
#define XCTAssertGreaterThan(expression1, expression2, ...) _XCTStubCompare(>, expression1, expression2, __VA_ARGS__)
#define XCTAssertGreaterThanOrEqual(expression1, expression2, ...) _XCTStubCompare(>=, expression1, expression2, __VA_ARGS__)
#define XCTAssertLessThan(expression1, expression2, ...) _XCTStubCompare(<, expression1, expression2, __VA_ARGS__)
#define XCTAssertLessThanOrEqual(expression1, expression2, ...) _XCTStubCompare(<=, expression1, expression2, __VA_ARGS__)
