/*
 * fuzz_proxyproto.c - the PROXY header parser never reads past its input,
 * and never claims a header longer than what it was given.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum proxyproto_result res;
    struct sockaddr_storage ss;
    socklen_t sl = 0;

    ssize_t n = proxyproto_parse(data, size, &res, &ss, &sl);
    if (n > (ssize_t)size || n == 0 || n < -2)
        abort();
    if (n > 0 && res == PROXYPROTO_ADDR && (sl == 0 || sl > sizeof(ss)))
        abort();
    return 0;
}
