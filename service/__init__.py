"""The service layer between every face and the scoring core (see ``service.core``)."""

from service.core import CancelToken, Limits, Service, from_settings
from service.errors import ClientGone, InvalidInput, Overloaded, ServiceError, TooLarge, Unauthorized, Unavailable
from service.models import Models

__all__ = ["CancelToken", "ClientGone", "InvalidInput", "Limits", "Models", "Overloaded", "Service", "ServiceError",
           "TooLarge", "Unauthorized", "Unavailable", "from_settings"]
