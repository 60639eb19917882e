"""netshrink.core: the interface every netshrink package shares."""

# ``x as x`` imports: the former names of the functions that modify their model (now ending in
# '_'), importable with a DeprecationWarning on each call; not in __all__
# (docs/api-conventions.md).
from netshrink.core.add_form import AddForm, HasAddForm
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
from netshrink.core.conventions import (
    call_checked,
    model_fingerprint,
    modifies_its_argument,
    takes_a_model,
)
from netshrink.core.deprecation import deprecated_alias
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
    apply_recipe_,
    describe_recipe,
    register_stage,
    stage_from_description,
)
from netshrink.core.stage import apply_recipe as apply_recipe
from netshrink.core.stats import (
    PACKED_BITS_ATTR,
    ModelStats,
    count_macs,
    count_params,
    state_bytes,
)
from netshrink.core.validation import check_choice, check_float, check_int

__all__ = [
    "AddForm", "HasAddForm",
    "CODEBOOK_BITS", "CODINGS", "CodebookForm", "HasCodebookForm",
    "ACTIVATION_KINDS", "ActivationForm", "HasIntegerForm", "IntegerForm",
    "INPUT_SIGN_ATTR", "PACKED_BITS_ATTR", "FoldsAffine", "applies_sign_to_input",
    "SPEC_ATTR", "STAGES", "Checkpoint", "CheckpointError", "Controller", "ModelStats",
    "Registry", "Stage",
    "apply_recipe_", "call_checked", "deprecated_alias", "model_fingerprint",
    "modifies_its_argument", "save_safetensors_atomic", "takes_a_model", "write_atomic",
    "write_text_atomic",
    "sweep_stale_temp_files", "FileLock", "LockHeldError",
    "check_choice", "check_depth", "check_float", "check_int", "count_macs", "count_params",
    "describe_recipe", "flatten_optimizer_state", "load_checkpoint", "loads_bounded",
    "register_stage", "restore_optimizer_state", "save_checkpoint", "stage_from_description",
    "state_bytes",
]
