"""mindswin: Swin Transformer V2 in MindSpore."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .factory import create_model
from .models import list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_checkpoint", "save_checkpoint", "CheckpointError", "__version__"]
