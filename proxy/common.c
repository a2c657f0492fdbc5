/*
 * common.c - the error table behind dt_strerror().
 */
#include "detour/common.h"

const char *dt_strerror(int err)
{
    switch (err) {
#define DT_ERR_CASE(name, val, msg)                                                                \
    case (val):                                                                                    \
        return msg;
        DT_ERRNO_MAP(DT_ERR_CASE)
#undef DT_ERR_CASE
    }
    return "unknown error";
}
