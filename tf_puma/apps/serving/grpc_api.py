"""TF Serving's gRPC API over served secure models: PredictionService `Predict` and
`GetModelMetadata`, ModelService `GetModelStatus` (tensorflow_serving.apis); the other methods
answer UNIMPLEMENTED with a sentence."""

from __future__ import annotations

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from tf_puma.apps.serving.models import ModelRegistry, RequestError


def _abort(context: grpc.ServicerContext, err: RequestError) -> None:
    context.abort(getattr(grpc.StatusCode, err.code), str(err))


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        try:
            servable = self.registry.find(spec.name, version, spec.version_label or None)
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = tf.make_ndarray(proto)
                except Exception as err:  # noqa: BLE001 - a malformed TensorProto
                    raise RequestError("INVALID_ARGUMENT",
                                       f"input {name!r}: not a valid TensorProto ({err})") from None
            outputs = self.registry.predict(servable, inputs, spec.signature_name or None,
                                            list(request.output_filter) or None)
        except RequestError as err:
            return _abort(context, err)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = servable.manifest.signature
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise RequestError("INVALID_ARGUMENT", "metadata_field must be ['signature_def'] "
                                   f"(got {list(request.metadata_field)})")
            servable = self.registry.find(spec.name, spec.version.value
                                          if spec.HasField("version") else None,
                                          spec.version_label or None)
        except RequestError as err:
            return _abort(context, err)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            if name == servable.manifest.signature:
                signatures.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signatures)
        return response

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "tf-puma serve answers Predict and GetModelMetadata (and ModelService "
                      "GetModelStatus); secure models have no classify/regress signatures")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        try:
            versions = self.registry.versions(spec.name, spec.version.value
                                              if spec.HasField("version") else None)
        except RequestError as err:
            return _abort(context, err)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state in versions:
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "tf-puma serve reloads from --model_base_path (new version directories), "
                      "not through HandleReloadConfigRequest")


def add_services(server: grpc.Server, registry: ModelRegistry) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
