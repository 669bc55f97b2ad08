// echoview's TensorRT shim: the TensorRT runtime API common to 8.5, 8.6 and 10, behind the C
// functions of shim.h.
//
// TensorRT's C++ classes are pImpl wrappers whose methods are inline in the headers, so the
// only libnvinfer symbol needed is the extern "C" createInferRuntime_INTERNAL, which the
// caller resolved with dlsym; CUDA functions come the same way. Nothing is linked, and without
// TensorRT headers only ev_trt_built_version and stubs reporting EV_NO_HEADERS are compiled.

#include "shim.h"

#include <stdio.h>
#include <string.h>

namespace {

// Writes a message into the caller's buffer, always terminated.
void set_message(char *message, size_t len, const char *text) {
    if (message == nullptr || len == 0) {
        return;
    }
    snprintf(message, len, "%s", text);
}

}  // namespace

#if defined(ECHOVIEW_HAVE_NVINFER)

#include <NvInferRuntime.h>

#include <new>

namespace {

// cudaMemcpyKind values, fixed by the CUDA runtime's ABI.
constexpr int kHostToDevice = 1;
constexpr int kDeviceToHost = 2;

// Keeps TensorRT's last error so a failure can say why; TensorRT logs from the calling thread
// during deserialisation and enqueue, which the engine serialises.
class Logger : public nvinfer1::ILogger {
  public:
    void log(Severity severity, const char *msg) noexcept override {
        if (severity <= Severity::kERROR && msg != nullptr) {
            snprintf(last_error, sizeof last_error, "%s", msg);
        }
    }
    char last_error[512] = {0};
};

}  // namespace

struct ev_trt_runtime {
    Logger logger;
    nvinfer1::IRuntime *runtime = nullptr;
};

struct ev_trt_encoder {
    ev_cuda_api cuda{};
    ev_trt_runtime *runtime = nullptr;
    nvinfer1::ICudaEngine *engine = nullptr;
    nvinfer1::IExecutionContext *context = nullptr;
    void *stream = nullptr;
    void *input = nullptr;
    void *output = nullptr;
    size_t input_bytes = 0;
    size_t output_bytes = 0;
};

namespace {

// The element count of a static shape, or -1 when any dimension is dynamic.
long long volume(const nvinfer1::Dims &dims) {
    long long n = 1;
    for (int i = 0; i < dims.nbDims; ++i) {
        if (dims.d[i] < 0) {
            return -1;
        }
        n *= dims.d[i];
    }
    return n;
}

// Checks that `name` is an f32 tensor of `mode` with `elems` elements in the plan.
int check_tensor(const nvinfer1::ICudaEngine &engine, const char *name,
                 nvinfer1::TensorIOMode mode, size_t elems, char *message, size_t len) {
    char text[256];
    if (engine.getTensorIOMode(name) != mode) {
        snprintf(text, sizeof text, "the plan has no %s tensor named \"%s\"",
                 mode == nvinfer1::TensorIOMode::kINPUT ? "input" : "output", name);
        set_message(message, len, text);
        return EV_IO_MISMATCH;
    }
    if (engine.getTensorDataType(name) != nvinfer1::DataType::kFLOAT) {
        snprintf(text, sizeof text,
                 "tensor \"%s\" is not f32 (build the plan without --inputIOFormats/"
                 "--outputIOFormats)",
                 name);
        set_message(message, len, text);
        return EV_IO_MISMATCH;
    }
    long long n = volume(engine.getTensorShape(name));
    if (n != static_cast<long long>(elems)) {
        snprintf(text, sizeof text, "tensor \"%s\" has %lld elements, the manifest implies %zu",
                 name, n, elems);
        set_message(message, len, text);
        return EV_IO_MISMATCH;
    }
    return EV_OK;
}

// Reports a failed CUDA call.
int cuda_failed(const char *what, int code, char *message, size_t len) {
    char text[128];
    snprintf(text, sizeof text, "%s failed with CUDA error %d", what, code);
    set_message(message, len, text);
    return EV_CUDA;
}

}  // namespace

extern "C" int32_t ev_trt_built_version(void) { return NV_TENSORRT_VERSION; }

extern "C" int ev_trt_runtime_create(ev_create_runtime_fn create_runtime, ev_trt_runtime **out,
                                     char *message, size_t message_len) {
    *out = nullptr;
    ev_trt_runtime *r = new (std::nothrow) ev_trt_runtime();
    if (r == nullptr) {
        set_message(message, message_len, "out of memory");
        return EV_RUNTIME_NULL;
    }
    // libnvinfer casts the void* back to ILogger*, so hand it exactly that pointer.
    nvinfer1::ILogger *logger = &r->logger;
    r->runtime = static_cast<nvinfer1::IRuntime *>(create_runtime(logger, NV_TENSORRT_VERSION));
    if (r->runtime == nullptr) {
        set_message(message, message_len, r->logger.last_error[0] != 0
                                              ? r->logger.last_error
                                              : "createInferRuntime_INTERNAL returned null");
        delete r;
        return EV_RUNTIME_NULL;
    }
    *out = r;
    return EV_OK;
}

extern "C" void ev_trt_runtime_destroy(ev_trt_runtime *r) {
    if (r == nullptr) {
        return;
    }
    delete r->runtime;
    delete r;
}

extern "C" int ev_trt_open(ev_trt_runtime *runtime, const ev_cuda_api *cuda, const void *plan,
                           size_t plan_bytes, const char *input_name, size_t input_elems,
                           const char *output_name, size_t output_elems, ev_trt_encoder **out,
                           char *message, size_t message_len) {
    *out = nullptr;
    ev_trt_encoder *e = new (std::nothrow) ev_trt_encoder();
    if (e == nullptr) {
        set_message(message, message_len, "out of memory");
        return EV_CUDA;
    }
    e->cuda = *cuda;
    e->runtime = runtime;
    runtime->logger.last_error[0] = 0;
    e->engine = runtime->runtime->deserializeCudaEngine(plan, plan_bytes);
    if (e->engine == nullptr) {
        set_message(message, message_len,
                    runtime->logger.last_error[0] != 0 ? runtime->logger.last_error
                                                       : "deserializeCudaEngine returned null");
        ev_trt_close(e);
        return EV_DESERIALIZE;
    }
    int status = check_tensor(*e->engine, input_name, nvinfer1::TensorIOMode::kINPUT,
                              input_elems, message, message_len);
    if (status == EV_OK) {
        status = check_tensor(*e->engine, output_name, nvinfer1::TensorIOMode::kOUTPUT,
                              output_elems, message, message_len);
    }
    if (status != EV_OK) {
        ev_trt_close(e);
        return status;
    }
    e->context = e->engine->createExecutionContext();
    if (e->context == nullptr) {
        set_message(message, message_len,
                    runtime->logger.last_error[0] != 0 ? runtime->logger.last_error
                                                       : "createExecutionContext returned null");
        ev_trt_close(e);
        return EV_CONTEXT;
    }
    e->input_bytes = input_elems * sizeof(float);
    e->output_bytes = output_elems * sizeof(float);
    int rc = e->cuda.stream_create(&e->stream);
    if (rc != 0) {
        ev_trt_close(e);
        return cuda_failed("cudaStreamCreate", rc, message, message_len);
    }
    rc = e->cuda.malloc(&e->input, e->input_bytes);
    if (rc != 0) {
        ev_trt_close(e);
        return cuda_failed("cudaMalloc (input)", rc, message, message_len);
    }
    rc = e->cuda.malloc(&e->output, e->output_bytes);
    if (rc != 0) {
        ev_trt_close(e);
        return cuda_failed("cudaMalloc (output)", rc, message, message_len);
    }
    if (!e->context->setTensorAddress(input_name, e->input) ||
        !e->context->setTensorAddress(output_name, e->output)) {
        set_message(message, message_len, "setTensorAddress refused a device buffer");
        ev_trt_close(e);
        return EV_IO_MISMATCH;
    }
    *out = e;
    return EV_OK;
}

extern "C" int ev_trt_infer(ev_trt_encoder *e, const float *input, float *output,
                            char *message, size_t message_len) {
    int rc = e->cuda.memcpy_async(e->input, input, e->input_bytes, kHostToDevice, e->stream);
    if (rc != 0) {
        return cuda_failed("cudaMemcpyAsync (to the GPU)", rc, message, message_len);
    }
    if (!e->context->enqueueV3(static_cast<cudaStream_t>(e->stream))) {
        const char *last = e->runtime->logger.last_error;
        set_message(message, message_len, last[0] != 0 ? last : "enqueueV3 failed");
        // The copy may still be in flight; wait so the caller's buffer is free again.
        e->cuda.stream_synchronize(e->stream);
        return EV_ENQUEUE;
    }
    rc = e->cuda.memcpy_async(output, e->output, e->output_bytes, kDeviceToHost, e->stream);
    if (rc != 0) {
        e->cuda.stream_synchronize(e->stream);
        return cuda_failed("cudaMemcpyAsync (from the GPU)", rc, message, message_len);
    }
    rc = e->cuda.stream_synchronize(e->stream);
    if (rc != 0) {
        return cuda_failed("cudaStreamSynchronize", rc, message, message_len);
    }
    return EV_OK;
}

extern "C" void ev_trt_close(ev_trt_encoder *e) {
    if (e == nullptr) {
        return;
    }
    if (e->stream != nullptr) {
        e->cuda.stream_synchronize(e->stream);
    }
    // Reverse order of creation: context, then engine (the runtime outlives both).
    delete e->context;
    delete e->engine;
    if (e->input != nullptr) {
        e->cuda.free(e->input);
    }
    if (e->output != nullptr) {
        e->cuda.free(e->output);
    }
    if (e->stream != nullptr) {
        e->cuda.stream_destroy(e->stream);
    }
    delete e;
}

#else  // no TensorRT headers: the version layer only

struct ev_trt_runtime {
    int unused;
};

struct ev_trt_encoder {
    int unused;
};

extern "C" int32_t ev_trt_built_version(void) { return 0; }

extern "C" int ev_trt_runtime_create(ev_create_runtime_fn, ev_trt_runtime **out, char *message,
                                     size_t message_len) {
    *out = nullptr;
    set_message(message, message_len, "built without TensorRT headers");
    return EV_NO_HEADERS;
}

extern "C" void ev_trt_runtime_destroy(ev_trt_runtime *) {}

extern "C" int ev_trt_open(ev_trt_runtime *, const ev_cuda_api *, const void *, size_t,
                           const char *, size_t, const char *, size_t, ev_trt_encoder **out,
                           char *message, size_t message_len) {
    *out = nullptr;
    set_message(message, message_len, "built without TensorRT headers");
    return EV_NO_HEADERS;
}

extern "C" int ev_trt_infer(ev_trt_encoder *, const float *, float *, char *message,
                            size_t message_len) {
    set_message(message, message_len, "built without TensorRT headers");
    return EV_NO_HEADERS;
}

extern "C" void ev_trt_close(ev_trt_encoder *) {}

#endif
