from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "arrow_batch")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ARROW_BATCH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    arrow_batch: bytes
    def __init__(self, request_id: _Optional[str] = ..., arrow_batch: _Optional[bytes] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("request_id", "arrow_batch", "timings_s", "error")
    class TimingsSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ARROW_BATCH_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_S_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    arrow_batch: bytes
    timings_s: _containers.ScalarMap[str, float]
    error: RequestError
    def __init__(self, request_id: _Optional[str] = ..., arrow_batch: _Optional[bytes] = ..., timings_s: _Optional[_Mapping[str, float]] = ..., error: _Optional[_Union[RequestError, _Mapping]] = ...) -> None: ...

class RequestError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PutTargetRequest(_message.Message):
    __slots__ = ("key", "image")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    image: bytes
    def __init__(self, key: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class PutTargetResponse(_message.Message):
    __slots__ = ("key", "workers")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    workers: int
    def __init__(self, key: _Optional[str] = ..., workers: _Optional[int] = ...) -> None: ...

class ResizeRequest(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    def __init__(self, workers: _Optional[int] = ...) -> None: ...

class PoolStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("workers", "ready", "starting", "recovering", "draining", "in_flight", "tasks", "retries", "restarts")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STARTING_FIELD_NUMBER: _ClassVar[int]
    RECOVERING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    ready: int
    starting: int
    recovering: int
    draining: int
    in_flight: int
    tasks: int
    retries: int
    restarts: int
    def __init__(self, workers: _Optional[int] = ..., ready: _Optional[int] = ..., starting: _Optional[int] = ..., recovering: _Optional[int] = ..., draining: _Optional[int] = ..., in_flight: _Optional[int] = ..., tasks: _Optional[int] = ..., retries: _Optional[int] = ..., restarts: _Optional[int] = ...) -> None: ...
