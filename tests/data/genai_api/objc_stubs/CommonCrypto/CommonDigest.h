// STUB of Apple's CommonCrypto/CommonDigest.h (a platform library, not part of slmkit or
// onnxruntime-genai): the SHA-256 declarations of Apple's documented API, only so that
// tests/test_mobile_compile.py can compile toolkit/runners/ios/SlmkitSmokeTests on Linux.
#include <stdint.h>

typedef uint32_t CC_LONG;

#define CC_SHA256_DIGEST_LENGTH 32
#define CC_SHA256_BLOCK_BYTES 64

typedef struct CC_SHA256state_st {
  CC_LONG count[2];
  CC_LONG hash[8];
  CC_LONG wbuf[16];
} CC_SHA256_CTX;

extern int CC_SHA256_Init(CC_SHA256_CTX* c);
extern int CC_SHA256_Update(CC_SHA256_CTX* c, const void* data, CC_LONG len);
extern int CC_SHA256_Final(unsigned char* md, CC_SHA256_CTX* c);
extern unsigned char* CC_SHA256(const void* data, CC_LONG len, unsigned char* md);
