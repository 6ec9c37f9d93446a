"""The error a served model raises for a bad request: HTTP 400 with only its own message.

How MLflow's scoring server (``mlflow models serve``) answers an exception raised in ``predict``:
a plain exception becomes a generic "unexpected error" 400 that carries the server's stack trace;
an ``MlflowException`` keeps its message, but the server first prefixes that message with the
request's whole DataFrame (``Failed to predict data '...'``), so a client gets its base64 payload
back. :class:`RequestError` serialises the message it was raised with, whatever is prefixed later.
"""

from __future__ import annotations

import json

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


class RequestError(MlflowException):
    """A request the model cannot score; the message names the row or field and what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.request_message = message

    def serialize_as_json(self) -> str:
        # The scoring server rewrites ``self.message`` (payload prefix) before serialising; answer
        # with the message as raised instead.
        return json.dumps({"error_code": self.error_code, "message": self.request_message})
