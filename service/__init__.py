"""The service layer between every face and the scoring core: the front door (``core``), its assembly from the
settings (``assembly``), the key, errors, metrics, models by name, uploads and the retrieve-then-rerank pipeline."""

from service import assembly
from service.core import CancelToken, Limits, Service
from service.errors import ClientGone, InvalidInput, Overloaded, ServiceError, TooLarge, Unauthorized, Unavailable
from service.models import Models

__all__ = ["CancelToken", "ClientGone", "InvalidInput", "Limits", "Models", "Overloaded", "Service", "ServiceError",
           "TooLarge", "Unauthorized", "Unavailable", "assembly"]
