"""One exception tree for billq.

Every failure is classified where it happens, so the worker routes by class::

    BillqError
    ├── TransientError          retry later: the same work may succeed
    │   ├── GatewayUnavailable      5xx, timeout, connection error, 409 key in flight
    │   │   └── GatewayRateLimited      429: too many requests; nothing ran, the gateway is up
    │   │                               (carries Retry-After; the worker waits, then resends)
    │   ├── OutcomeUnknown          the gateway may or may not have charged
    │   ├── DatabaseUnavailable     connection lost, serialization failure, deadlock
    │   ├── BrokerUnavailable       no RabbitMQ broker in BILLQ_AMQP_URL answered
    │   ├── PublishFailed           RabbitMQ did not confirm a publish in time
    │   └── HookDeliveryFailed      a run hook's receiver did not answer 2xx (retried later)
    ├── FatalError              retrying cannot help: dead-letter with the reason
    │   ├── InvalidMessage          undecodable body or schema violation
    │   ├── UnknownJob              message names a job or account that does not exist
    │   ├── AccountNotBillable      cancelled / suspended account
    │   ├── BadSignature            message signing enabled, signature missing or wrong
    │   ├── GatewayRejected         permanent gateway error (invalid request)
    │   │   ├── GatewayMisconfigured    the gateway refused *us* (401/403, unusable URL):
    │   │   │                           not the job's fault; the worker's breaker holds work
    │   │   └── RefundRefused           a refund of more than the charge has left
    │   └── Unroutable              RabbitMQ returned a publish as unroutable
    ├── ActionRefused           an operator action not allowed in the job's state (exit 1)
    ├── RequestRefused          an API request (or its CLI twin) refused: HTTP 4xx, exit 1
    │   ├── InvalidRequest          a parameter is missing or invalid (400, names it)
    │   ├── NotFound                no such account or job (404)
    │   └── IdempotencyConflict     the Idempotency-Key was used for another request (409)
    ├── ImportRejected          an import file has bad rows; nothing imported (exit 1)
    ├── InvalidField            one field of an import row (collected per row with its line
    │                           and column; never escapes a command)
    └── ConfigError             bad setting or CLI argument: one clear line, exit 2
        ├── TopologyMismatch        existing queues were declared with other arguments
        └── BrokerRefused           a broker would not open BILLQ_AMQP_URL's virtual host

``shared.entrypoint`` maps the tree to exit codes: ConfigError → 2, any other BillqError → 1.

A card decline is not an exception: it is a business outcome (``Declined``) returned
by the gateway port.
"""

from __future__ import annotations


class BillqError(Exception):
    """A billq failure."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self)


class TransientError(BillqError):
    """A transient failure; the same work may succeed later."""


class GatewayUnavailable(TransientError):
    """The payment gateway did not answer usefully (5xx, timeout, connection, rate limit)."""


class GatewayRateLimited(GatewayUnavailable):
    """The gateway refused the request as one too many (429); nothing ran.

    A subclass of ``GatewayUnavailable``, so every route that handles an unavailable gateway
    still handles it; the worker's rate limiter catches it first, waits (``retry_after_s``
    from the ``Retry-After`` header when the gateway sent one) and resends under the same key.
    """

    def __init__(self, message: str | None = None, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class OutcomeUnknown(TransientError):
    """The gateway may have charged; retry with the same idempotency key to learn the outcome."""


class DatabaseUnavailable(TransientError):
    """Postgres is unreachable or refused the transaction for a retryable reason."""


class BrokerUnavailable(TransientError):
    """No RabbitMQ broker in BILLQ_AMQP_URL answered."""


class PublishFailed(TransientError):
    """RabbitMQ did not confirm the publish in time."""


class HookDeliveryFailed(TransientError):
    """The run hook receiver did not accept the event; it is retried with backoff."""


class FatalError(BillqError):
    """A permanent failure; retrying cannot help."""


class InvalidMessage(FatalError):
    """The message body is not a valid billq charge message."""

    def __init__(self, reason: str, body_excerpt: bytes = b"") -> None:
        self.reason = reason
        self.body_excerpt = body_excerpt[:64]
        super().__init__(f"invalid message: {reason}")


class UnknownJob(FatalError):
    """The message names a job or account that does not exist."""


class AccountNotBillable(FatalError):
    """The account may not be charged (cancelled or suspended)."""


class BadSignature(FatalError):
    """The message signature is missing or does not verify."""


class GatewayRejected(FatalError):
    """The gateway refused the request permanently (invalid request or authentication)."""


class GatewayMisconfigured(GatewayRejected):
    """The gateway refused billq itself (credentials, permissions or an unusable URL)."""


class RefundRefused(GatewayRejected):
    """The refund asks for more than the charge has left to refund; nothing was refunded."""


class Unroutable(FatalError):
    """RabbitMQ returned the message as unroutable (topology missing?)."""


class ActionRefused(BillqError):
    """The requested action is not allowed in the job's current state."""


class RequestRefused(BillqError):
    """The request was refused as asked."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class InvalidRequest(RequestRefused):
    """A parameter is missing or invalid."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param)
        if code is not None:
            self.code = code


class NotFound(RequestRefused):
    """No such object."""

    status = 404
    code = "resource_missing"


class IdempotencyConflict(RequestRefused):
    """The Idempotency-Key was used for a different request."""

    status = 409
    type = "idempotency_error"
    code = "idempotency_key_in_use"


class ImportRejected(BillqError):
    """The import file has bad rows; nothing was imported."""


class InvalidField(BillqError, ValueError):
    """A field of an import row is invalid."""

    def __init__(self, column: str, reason: str) -> None:
        self.column = column
        self.reason = reason
        super().__init__(f"{column}: {reason}")


class ConfigError(BillqError):
    """A setting or command-line argument is invalid."""


class TopologyMismatch(ConfigError):
    """RabbitMQ refused a declaration: the queues exist with other arguments."""


class BrokerRefused(ConfigError):
    """RabbitMQ would not open the virtual host (missing, or the user is not permitted)."""
