"""A server target declared in tests only: the TF Serving test double (tests/fake_tfserving.py)
under a name of its own, to prove that adding a server is one declaration. The kit imports this
file when DEPLOYBENCH_TARGETS names it (the CLI in the test's process, and the locust process
it starts); the double's addresses come from DOUBLE_REST_URL and DOUBLE_GRPC_TARGET.

It is a test double, not TF Serving, and its name and label say so in every result.
"""

import os

from deploybench.serving.clients import TFServingGRPC, TFServingREST
from deploybench.serving.targets import Endpoint, Protocol, Target, register

NAME = "tfserving-double"
LABEL = "TF Serving test double"

register(Target(
    name=NAME,
    label=LABEL,
    framework="tensorflow",
    artifact_format="savedmodel",
    protocols=(
        Protocol("rest", "REST", "rest", "json", TFServingREST, "DoubleRESTUser"),
        Protocol("grpc", "gRPC", "grpc", "tfserving-grpc", TFServingGRPC, "DoubleGRPCUser"),
    ),
    endpoints=(
        Endpoint("rest", os.environ.get("DOUBLE_REST_URL", "http://127.0.0.1:18501"),
                 "double-rest-url"),
        Endpoint("grpc", os.environ.get("DOUBLE_GRPC_TARGET", "127.0.0.1:18500"),
                 "double-grpc-target"),
    ),
))
