/*
** Names and messages for ember's error codes, falling back to libuv's.
*/
#include "error.h"

#include <uv.h>

const char *ember_err_name(int code) {
  switch (code) {
#define EMBER_ERRNO_NAME(name, value, message)                                 \
  case value:                                                                  \
    return "E" #name;
    EMBER_ERRNO_MAP(EMBER_ERRNO_NAME)
#undef EMBER_ERRNO_NAME
  default:
    return uv_err_name(code);
  }
}

const char *ember_strerror(int code) {
  switch (code) {
#define EMBER_ERRNO_MESSAGE(name, value, message)                              \
  case value:                                                                  \
    return message;
    EMBER_ERRNO_MAP(EMBER_ERRNO_MESSAGE)
#undef EMBER_ERRNO_MESSAGE
  default:
    return uv_strerror(code);
  }
}
