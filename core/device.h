/*
** Which compute devices this build can use. The CUDA backend is optional; a
** build without it reports the device as unavailable.
*/
#ifndef EMBER_DEVICE_H
#define EMBER_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

/*
** Sets *count to the number of usable CUDA devices. Returns 0, with *count
** 0 when CUDA is built in but no device or driver is present; EMBER_ENOCUDA
** (and *count 0) in a build without CUDA.
*/
int ember_cuda_device_count(int *count);

#ifdef __cplusplus
}
#endif

#endif
