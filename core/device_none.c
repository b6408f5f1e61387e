/*
** The CUDA backend of a build without CUDA: there is none.
*/
#include "device.h"

const ember_cuda_backend_t *ember__cuda_backend(void) { return NULL; }
