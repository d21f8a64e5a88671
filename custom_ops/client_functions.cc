// The client's function library: a body replaced in this process only (no RPC to the parties).
//
// TensorFlow's eager context sends every function a client adds to every remote task
// (EagerContext::AddFunctionDef -> MaybeRegisterFunctionRemotely). A party never runs a secure
// signature's whole function, only its own partition, which the client registers with it when
// the function is first called. For SmolLM2's generation model the two whole functions cost
// each party ~350 MiB. tf_puma.function_library therefore adds each function by name only (the
// parties store that empty definition and remove it again on release) and then gives it its
// body here, in the client's library alone.
#include <cstdio>
#include <string>

#include "tensorflow/c/eager/c_api.h"
#include "tensorflow/c/eager/immediate_execution_context.h"
#include "tensorflow/c/eager/tfe_context_internal.h"
#include "tensorflow/core/framework/function.h"
#include "tensorflow/core/framework/function.pb.h"

// Replaces the body of function `fdef.signature.name` (already in the library of the eager
// context `context`, a TFE_Context*) with the serialized FunctionDef `data`. Returns 0, or 1
// with a message in `error`.
extern "C" __attribute__((visibility("default"))) int TfPumaReplaceFunctionLocally(
    void* context, const char* data, size_t size, char* error, size_t error_size) {
  tensorflow::FunctionDef fdef;
  if (context == nullptr || !fdef.ParseFromArray(data, static_cast<int>(size))) {
    std::snprintf(error, error_size, "not an eager context and a serialized FunctionDef");
    return 1;
  }
  tensorflow::FunctionLibraryDefinition* library =
      tensorflow::unwrap(static_cast<TFE_Context*>(context))->FuncLibDef();
  const absl::Status status = library->ReplaceFunction(fdef.signature().name(), fdef);
  if (!status.ok()) {
    std::snprintf(error, error_size, "%s", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
