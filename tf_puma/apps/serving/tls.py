"""`--ssl_config_file`: TLS for the gRPC clients of `tf-puma serve`, as tensorflow_model_server
reads it: a text-format `tensorflow.serving.SSLConfig` (tensorflow_serving/config/ssl_config.proto)

    server_key: "-----BEGIN PRIVATE KEY-----\\n..."   # PEM text, not a path (as TF Serving)
    server_cert: "-----BEGIN CERTIFICATE-----\\n..."
    custom_ca: "..."          # optional: the CA that signs client certificates
    client_verify: true       # optional: require and verify a client certificate

As in TF Serving, it secures the gRPC port only; the REST port stays plain HTTP (put a TLS proxy
in front of it, or leave --rest_api_port 0). The pip package tensorflow-serving-api does not
ship ssl_config_pb2, so the message is declared here from the same four fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SSLConfig:
    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False


def _message_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: PLC0415

    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="tf_puma_ssl_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    message = proto.message_type.add(name="SSLConfig")
    string, boolean = (descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                       descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
    for number, (name, kind) in enumerate((("server_key", string), ("server_cert", string),
                                           ("custom_ca", string), ("client_verify", boolean)),
                                          start=1):
        message.field.add(name=name, number=number, type=kind,
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


def read_ssl_config(path: str) -> SSLConfig:
    """Parses the SSLConfig text proto at `path`; ValueError naming what is missing or wrong."""
    from google.protobuf import text_format  # noqa: PLC0415

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    parsed = _message_class()()
    try:
        text_format.Parse(text, parsed)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not an SSLConfig text proto ({err}); it holds server_key, "
                         "server_cert (PEM text), custom_ca and client_verify") from None
    config = SSLConfig(parsed.server_key, parsed.server_cert, parsed.custom_ca,
                       parsed.client_verify)
    for field, marker in (("server_key", "PRIVATE KEY-----"), ("server_cert", "CERTIFICATE-----")):
        if marker not in getattr(config, field):
            raise ValueError(f"{path}: {field} must hold the PEM text itself (a line with "
                             f"'-----BEGIN ...{marker}'), as tensorflow_model_server reads it, "
                             "not a file name")
    if config.client_verify and "CERTIFICATE-----" not in config.custom_ca:
        raise ValueError(f"{path}: client_verify needs custom_ca: the PEM certificate of the CA "
                         "that signs the clients' certificates")
    return config


def server_credentials(config: SSLConfig) -> Any:
    """grpc.ServerCredentials for the config: the server's key pair; with client_verify, a
    client certificate signed by custom_ca is required (TF Serving's
    REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY)."""
    import grpc  # noqa: PLC0415

    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() if config.custom_ca else None,
        require_client_auth=config.client_verify)
