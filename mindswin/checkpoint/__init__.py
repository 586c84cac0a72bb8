"""Checkpoint reading, layout conversion and loading."""
from .layouts import LAYOUTS, detect_layout, to_mindswin_names
from .loader import LoadReport, describe_architecture, load_checkpoint, load_state_dict, read_state_dict
from .metadata import CheckpointMetadata
from .native import read_meta_json, read_metadata, save_checkpoint, save_tensors
from .readers import CheckpointError, read_tensors

__all__ = [
    "CheckpointError", "LoadReport", "LAYOUTS", "detect_layout", "to_mindswin_names", "read_tensors",
    "read_state_dict", "load_state_dict", "load_checkpoint", "describe_architecture", "save_checkpoint",
    "read_metadata", "read_meta_json", "save_tensors", "CheckpointMetadata",
]
