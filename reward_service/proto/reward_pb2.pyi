from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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

class DeleteTargetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeleteTargetResponse(_message.Message):
    __slots__ = ("key", "workers")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    workers: int
    def __init__(self, key: _Optional[str] = ..., workers: _Optional[int] = ...) -> None: ...

class ListGraphsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListGraphsResponse(_message.Message):
    __slots__ = ("graphs",)
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    graphs: _containers.RepeatedCompositeFieldContainer[GraphSummary]
    def __init__(self, graphs: _Optional[_Iterable[_Union[GraphSummary, _Mapping]]] = ...) -> None: ...

class GraphSummary(_message.Message):
    __slots__ = ("graph_id", "category", "description", "nodes", "parameters")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    category: str
    description: str
    nodes: int
    parameters: int
    def __init__(self, graph_id: _Optional[str] = ..., category: _Optional[str] = ..., description: _Optional[str] = ..., nodes: _Optional[int] = ..., parameters: _Optional[int] = ...) -> None: ...

class DescribeGraphRequest(_message.Message):
    __slots__ = ("graph_id", "graph_json")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    GRAPH_JSON_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    graph_json: str
    def __init__(self, graph_id: _Optional[str] = ..., graph_json: _Optional[str] = ...) -> None: ...

class GraphDescription(_message.Message):
    __slots__ = ("graph_id", "name", "category", "description", "graph_json", "nodes")
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    GRAPH_JSON_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    graph_id: str
    name: str
    category: str
    description: str
    graph_json: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeDescription]
    def __init__(self, graph_id: _Optional[str] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., description: _Optional[str] = ..., graph_json: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeDescription, _Mapping]]] = ...) -> None: ...

class NodeDescription(_message.Message):
    __slots__ = ("name", "type", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterDescription]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterDescription, _Mapping]]] = ...) -> None: ...

class ParameterDescription(_message.Message):
    __slots__ = ("name", "kind", "low", "high", "choices", "components", "value_json", "default_json", "predicted", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_JSON_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    low: float
    high: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    components: int
    value_json: str
    default_json: str
    predicted: bool
    doc: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ..., components: _Optional[int] = ..., value_json: _Optional[str] = ..., default_json: _Optional[str] = ..., predicted: _Optional[bool] = ..., doc: _Optional[str] = ...) -> None: ...

class ResizeRequest(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    def __init__(self, workers: _Optional[int] = ...) -> None: ...

class PoolStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("workers", "ready", "starting", "recovering", "draining", "in_flight", "tasks", "retries", "restarts", "targets", "target_bytes", "abandoned", "max_workers", "min_workers")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    STARTING_FIELD_NUMBER: _ClassVar[int]
    RECOVERING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    ready: int
    starting: int
    recovering: int
    draining: int
    in_flight: int
    tasks: int
    retries: int
    restarts: int
    targets: int
    target_bytes: int
    abandoned: int
    max_workers: int
    min_workers: int
    def __init__(self, workers: _Optional[int] = ..., ready: _Optional[int] = ..., starting: _Optional[int] = ..., recovering: _Optional[int] = ..., draining: _Optional[int] = ..., in_flight: _Optional[int] = ..., tasks: _Optional[int] = ..., retries: _Optional[int] = ..., restarts: _Optional[int] = ..., targets: _Optional[int] = ..., target_bytes: _Optional[int] = ..., abandoned: _Optional[int] = ..., max_workers: _Optional[int] = ..., min_workers: _Optional[int] = ...) -> None: ...
