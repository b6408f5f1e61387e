/*
** The device query of a build without CUDA.
*/
#include "device.h"

#include "error.h"

int ember_cuda_device_count(int *count) {
  *count = 0;
  return EMBER_ENOCUDA;
}
