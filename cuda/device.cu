/*
** The device query of a build with CUDA.
*/
#include <cuda_runtime.h>

#include "device.h"

extern "C" int ember_cuda_device_count(int *count) {
  int found = 0;
  /* No driver or no device is not an error: the device is just unavailable. */
  if (cudaGetDeviceCount(&found) != cudaSuccess) {
    cudaGetLastError();
    found = 0;
  }
  *count = found;
  return 0;
}
