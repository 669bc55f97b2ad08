/* The C boundary between echoview (Rust) and TensorRT's C++ runtime API.
 *
 * Rust loads libnvinfer and the CUDA runtime with dlopen and hands the shim the few entry
 * points it needs as function pointers, so neither library is linked: the binary starts on a
 * machine without them. Every call returns a status code and, on failure, a message in the
 * caller's buffer; nothing here throws or aborts. */
#ifndef ECHOVIEW_TRT_SHIM_H
#define ECHOVIEW_TRT_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes; the Rust side maps each one to a fallback reason. */
#define EV_OK 0
#define EV_NO_HEADERS 1     /* the shim was compiled without TensorRT headers */
#define EV_RUNTIME_NULL 2   /* createInferRuntime_INTERNAL returned null */
#define EV_DESERIALIZE 3    /* the plan did not deserialise */
#define EV_CONTEXT 4        /* no execution context could be made */
#define EV_IO_MISMATCH 5    /* the plan's tensors differ from the manifest's */
#define EV_CUDA 6           /* a CUDA call failed */
#define EV_ENQUEUE 7        /* enqueueV3 failed */

/* extern "C" entry point of libnvinfer: void* createInferRuntime_INTERNAL(void*, int32_t). */
typedef void *(*ev_create_runtime_fn)(void *logger, int32_t version);

/* The CUDA runtime functions the shim calls, resolved by the caller (cudaError_t is an int,
 * cudaStream_t a pointer, cudaMemcpyKind an int). */
typedef struct ev_cuda_api {
    int (*malloc)(void **ptr, size_t bytes);
    int (*free)(void *ptr);
    int (*memcpy_async)(void *dst, const void *src, size_t bytes, int kind, void *stream);
    int (*stream_create)(void **stream);
    int (*stream_synchronize)(void *stream);
    int (*stream_destroy)(void *stream);
} ev_cuda_api;

/* NV_TENSORRT_VERSION of the headers the shim was compiled against; 0 without headers. */
int32_t ev_trt_built_version(void);

/* A TensorRT IRuntime with the logger it reports to. */
typedef struct ev_trt_runtime ev_trt_runtime;

/* Makes a runtime through libnvinfer's factory. Needs no CUDA functions, so a library that
 * cannot make one is told apart from a missing CUDA runtime. */
int ev_trt_runtime_create(ev_create_runtime_fn create_runtime, ev_trt_runtime **out,
                          char *message, size_t message_len);

/* Frees a runtime after every encoder made from it; null is allowed. */
void ev_trt_runtime_destroy(ev_trt_runtime *runtime);

/* An encoder plan ready to run: engine, context, stream and device buffers. */
typedef struct ev_trt_encoder ev_trt_encoder;

/* Deserialises `plan` on `runtime` (which must outlive the encoder) and binds its input
 * `input_name` (`input_elems` f32) and output `output_name` (`output_elems` f32) to device
 * buffers. On EV_OK, *out owns everything but the runtime. */
int ev_trt_open(ev_trt_runtime *runtime, const ev_cuda_api *cuda, const void *plan,
                size_t plan_bytes, const char *input_name, size_t input_elems,
                const char *output_name, size_t output_elems, ev_trt_encoder **out,
                char *message, size_t message_len);

/* Copies `input` to the GPU, runs enqueueV3 on the encoder's stream, and copies the output
 * back into `output`, waiting for the stream. */
int ev_trt_infer(ev_trt_encoder *encoder, const float *input, float *output, char *message,
                 size_t message_len);

/* Frees everything `ev_trt_open` made; null is allowed. */
void ev_trt_close(ev_trt_encoder *encoder);

#ifdef __cplusplus
}
#endif

#endif
