/* Stand-in for libnvidia-ml.so.1 with the NVML entry points preflight calls.
 * Values come from -D flags set by the test from a real recording (see
 * tests/test_gpu_detect.py); -DHANG makes nvmlInit_v2 block like a wedged driver. */
#include <string.h>
#include <unistd.h>

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

int nvmlInit_v2(void) {
#ifdef HANG
    for (;;) sleep(60);
#endif
    return 0;
}
int nvmlShutdown(void) { return 0; }
int nvmlSystemGetDriverVersion(char *out, unsigned len) {
    strncpy(out, DRIVER, len);
    return 0;
}
int nvmlSystemGetCudaDriverVersion_v2(int *version) { *version = CUDA; return 0; }
int nvmlDeviceGetCount_v2(unsigned *count) { *count = COUNT; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned index, void **handle) {
    *handle = (void *)(unsigned long)(index + 1);
    return 0;
}
int nvmlDeviceGetName(void *handle, char *out, unsigned len) {
    (void)handle;
    strncpy(out, NAME, len);
    return 0;
}
int nvmlDeviceGetMemoryInfo(void *handle, nvmlMemory_t *memory) {
    (void)handle;
    memory->total = (unsigned long long)MEM_MIB * 1024 * 1024;
    memory->used = 0;
    memory->free = memory->total;
    return 0;
}
int nvmlDeviceGetCudaComputeCapability(void *handle, int *major, int *minor) {
    (void)handle;
    *major = MAJOR;
    *minor = MINOR;
    return 0;
}
int nvmlDeviceGetMigMode(void *handle, unsigned *current, unsigned *pending) {
    (void)handle;
    *current = *pending = MIG;
    return 0;
}
