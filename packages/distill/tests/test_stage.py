import copy
import json

import pytest
import torch
from torch import nn

from netshrink.core import STAGES, stage_from_description
from netshrink.core.stage import loss_stage
from netshrink.distill import DistillConfig, DistillStage, kd_loss


def _net(seed: int, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def _train(student: nn.Module, stage: DistillStage, steps: int = 5) -> None:
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    student.train()
    for i in range(steps):
        x, y = _batch(i)
        out = student(x)
        loss = stage.training_loss(x, out, y, nn.functional.cross_entropy(out, y))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_registered_as_a_stage_kind():
    assert STAGES.get("distill.kd") is DistillStage
    assert DistillStage.kind == "distill.kd"


def test_teacher_is_frozen_gets_no_gradient_and_keeps_its_weights_and_statistics():
    teacher, student = _net(1), _net(2)
    teacher.train()  # the stage puts it in eval mode
    before = copy.deepcopy(teacher.state_dict())
    stage = DistillStage(DistillConfig(alpha=0.9, temperature=4.0), teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student_before = copy.deepcopy(student.state_dict())
    _train(student, stage)
    teacher.train()  # even if someone flips it back, the hook evaluates in eval mode
    _train(student, stage, steps=1)
    assert all(p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():  # BN running stats included
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_training_loss_is_kd_loss_of_the_teachers_logits():
    teacher, student = _net(1), _net(2)
    stage = DistillStage(DistillConfig(alpha=0.7, temperature=3.0), teacher)
    x, y = _batch()
    out = student(x)
    base = nn.functional.cross_entropy(out, y)
    with torch.no_grad():
        expected = kd_loss(out, teacher.eval()(x), y, 0.7, 3.0)
    assert torch.equal(stage.training_loss(x, out, y, base).detach(), expected)


def test_apply_leaves_the_student_alone_and_the_teacher_out_of_it():
    teacher, student = _net(1), _net(2)
    keys = list(student.state_dict())
    params = list(student.parameters())
    stage = DistillStage(DistillConfig(), teacher)
    assert stage.apply(student) is student
    _train(student, stage, steps=1)
    assert list(student.state_dict()) == keys
    assert list(student.parameters()) == params
    assert not any(m is teacher for m in student.modules())


def test_a_teacher_sharing_the_students_parameters_is_refused():
    student = _net(2)
    with pytest.raises(ValueError, match="shares parameters"):
        DistillStage(DistillConfig(), student).apply(student)
    shared = nn.Sequential(student[0], nn.Flatten())
    with pytest.raises(ValueError, match="shares parameters"):
        DistillStage(DistillConfig(), shared).apply(_net(3).append(student[0]))


def test_describe_is_json_with_the_teachers_identity_and_rebuild_needs_no_teacher(tmp_path):
    teacher = _net(1)
    teacher.netshrink_spec = {"name": "tiny", "kwargs": {"classes": 4}}
    stage = DistillStage(DistillConfig(alpha=0.5, temperature=2.0), teacher,
                         teacher_path=tmp_path / "t.safetensors")
    record = json.loads(json.dumps(stage.describe()))
    assert record["kind"] == "distill.kd"
    assert record["config"] == {"alpha": 0.5, "temperature": 2.0}
    assert record["teacher"]["model"] == {"name": "tiny", "kwargs": {"classes": 4}}
    assert record["teacher"]["checkpoint"] == str(tmp_path / "t.safetensors")
    assert record["teacher"]["class"] == "torch.nn.modules.container.Sequential"
    assert record["teacher"]["params"] == sum(p.numel() for p in teacher.parameters())
    plain = DistillStage(DistillConfig(), _net(3)).describe()["teacher"]
    assert plain["model"] is None and plain["checkpoint"] is None
    rebuilt = stage_from_description(record)
    assert isinstance(rebuilt, DistillStage) and rebuilt.teacher is None
    assert rebuilt.config == stage.config
    student = _net(2)
    assert rebuilt.rebuild(student) is student
    x, y = _batch()
    with pytest.raises(RuntimeError, match="has no teacher"):
        rebuilt.training_loss(x, student(x), y, torch.zeros(()))


def test_teacher_follows_the_inputs_memory_format_and_the_callers_autocast():
    teacher = _net(1)
    stage = DistillStage(DistillConfig(), teacher)
    x, _ = _batch()
    stage.teacher_logits(x.contiguous(memory_format=torch.channels_last))
    assert teacher[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not teacher[0].weight.is_contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert stage.teacher_logits(x).dtype == torch.bfloat16
    assert stage.teacher_logits(x).dtype == torch.float32
    assert teacher[0].weight.is_contiguous()


def test_only_one_stage_of_a_recipe_may_replace_the_loss():
    a, b = DistillStage(DistillConfig(), _net(1)), DistillStage(DistillConfig(), _net(2))
    assert loss_stage([a]) is a
    with pytest.raises(ValueError, match=r"at most one stage.*distill\.kd \(stage 0\), "
                                         r"distill\.kd \(stage 1\)"):
        loss_stage([a, b])


def test_teacher_path_without_a_teacher_and_a_non_module_are_refused():
    with pytest.raises(ValueError, match="without a teacher"):
        DistillStage(DistillConfig(), teacher_path="t.safetensors")
    with pytest.raises(TypeError, match="nn.Module"):
        DistillStage(DistillConfig(), teacher=lambda x: x)
