"""netshrink.core: the interface every netshrink package shares."""

from netshrink.core.atomic import (
    save_safetensors_atomic,
    sweep_stale_temp_files,
    write_atomic,
    write_text_atomic,
)
from netshrink.core.bounded_json import check_depth, loads_bounded
from netshrink.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    flatten_optimizer_state,
    load_checkpoint,
    restore_optimizer_state,
    save_checkpoint,
)
from netshrink.core.codebook_form import CODEBOOK_BITS, CODINGS, CodebookForm, HasCodebookForm
from netshrink.core.controller import Controller
from netshrink.core.filelock import FileLock, LockHeldError
from netshrink.core.integer_form import (
    ACTIVATION_KINDS,
    ActivationForm,
    HasIntegerForm,
    IntegerForm,
)
from netshrink.core.protocols import INPUT_SIGN_ATTR, FoldsAffine, applies_sign_to_input
from netshrink.core.registry import Registry
from netshrink.core.stage import (
    SPEC_ATTR,
    STAGES,
    Stage,
    apply_recipe,
    describe_recipe,
    register_stage,
    stage_from_description,
)
from netshrink.core.stats import (
    PACKED_BITS_ATTR,
    ModelStats,
    count_macs,
    count_params,
    state_bytes,
)
from netshrink.core.validation import check_choice, check_float, check_int

__all__ = [
    "CODEBOOK_BITS", "CODINGS", "CodebookForm", "HasCodebookForm",
    "ACTIVATION_KINDS", "ActivationForm", "HasIntegerForm", "IntegerForm",
    "INPUT_SIGN_ATTR", "PACKED_BITS_ATTR", "FoldsAffine", "applies_sign_to_input",
    "SPEC_ATTR", "STAGES", "Checkpoint", "CheckpointError", "Controller", "ModelStats",
    "Registry", "Stage",
    "apply_recipe", "save_safetensors_atomic", "write_atomic", "write_text_atomic",
    "sweep_stale_temp_files", "FileLock", "LockHeldError",
    "check_choice", "check_depth", "check_float", "check_int", "count_macs", "count_params",
    "describe_recipe", "flatten_optimizer_state", "load_checkpoint", "loads_bounded",
    "register_stage", "restore_optimizer_state", "save_checkpoint", "stage_from_description",
    "state_bytes",
]
