from .atomic import append_parquet, atomic_path, read_parquet, write_parquet
from .checkpoint import load_checkpoint, save_checkpoint
from .hashing import file_digest, inputs_digest, params_digest

__all__ = [
    "append_parquet", "atomic_path", "read_parquet", "write_parquet",
    "load_checkpoint", "save_checkpoint", "file_digest", "inputs_digest", "params_digest",
]
