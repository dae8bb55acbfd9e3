# Type stubs of mcompress.torch (see torch.py for the docstrings).
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

PathLike = Any
Progress = Union[None, bool, Callable[[Dict[str, Any]], None]]

def quantize_(module: Any, calib_batches: Iterable[Any], method: str = ..., bits: int = ...,
              group_size: Optional[int] = ..., act_order: bool = ..., sym: Optional[bool] = ...,
              blocks: Optional[Sequence[Any]] = ..., targets: Optional[Sequence[str]] = ...,
              ignore: Optional[Sequence[str]] = ..., progress: Progress = ..., damp: float = ...,
              fp64: bool = ..., scale_groups: Optional[Mapping[str, Sequence[str]]] = ...) -> List[Dict[str, Any]]: ...
def prune_(module: Any, calib_batches: Iterable[Any], method: str = ..., sparsity: float = ...,
           pattern: Optional[str] = ..., bits: Optional[int] = ..., group_size: Optional[int] = ..., sym: bool = ...,
           blocks: Optional[Sequence[Any]] = ..., targets: Optional[Sequence[str]] = ...,
           ignore: Optional[Sequence[str]] = ..., progress: Progress = ..., damp: float = ...,
           fp64: bool = ...) -> List[Dict[str, Any]]: ...
def save(module: Any, path: PathLike, metadata: Optional[Mapping[str, str]] = ...) -> None: ...

class PackedStateDict(Dict[str, Any]):
    metadata: Dict[str, str]

def to_state_dict(module: Any, metadata: Optional[Mapping[str, str]] = ...) -> PackedStateDict: ...
