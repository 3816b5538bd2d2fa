"""lib.policies.AugmentSpec: the one reading of the config that both augmentation pipelines use."""
import torch
from torchvision.transforms import v2

from lib.augment import BatchMix, train_transform
from lib.batch_augment import BatchAugment
from lib.config import make_config
from lib.policies import AugmentSpec

MEAN, STD = [0.5] * 3, [0.25] * 3


def test_paper_profile_is_the_notebooks_pipeline():
    # the notebooks: RandomCrop(32, 4), RandomHorizontalFlip, RandAugment() (2 ops, magnitude 9), MixUp/CutMix always
    spec = AugmentSpec.of(make_config("paper", model="robust_resnet64"))
    assert (spec.crop, spec.flip, spec.policy, spec.num_ops, spec.magnitude) == (True, True, "randaugment", 2, 9)
    assert (spec.jitter, spec.rotation, spec.erasing_prob, spec.mix_prob) == (0.0, 0.0, 0.0, 1.0)


def test_base45_recipe_autoaugment_and_random_erasing():
    # its notebooks: AutoAugment(CIFAR10), RandomErasing(p=0.5, scale=(0.02, 0.1), value='random')
    spec = AugmentSpec.of(make_config("paper", model="light_resnet18_v2_b45"))
    assert (spec.policy, spec.erasing_prob, spec.erasing_max_area, spec.erasing_random) == \
        ("autoaugment", 0.5, 0.1, True)
    erasing = [t for t in train_transform(spec, MEAN, STD).transforms if isinstance(t, v2.RandomErasing)]
    assert len(erasing) == 1 and erasing[0].p == 0.5 and erasing[0].scale == (0.02, 0.1)
    assert erasing[0].value is None  # how torchvision stores value="random"


def test_strengths_of_ops_that_are_off_do_not_leak():
    # colour_jitter and rotation have non-zero defaults, but the paper preset does not turn them on
    cfg = make_config("paper", augment="crop,flip", color_jitter=0.5, rotation_degrees=20, erasing_prob=0.9)
    spec = AugmentSpec.of(cfg)
    assert (spec.jitter, spec.rotation, spec.erasing_prob, spec.policy) == (0.0, 0.0, 0.0, None)
    assert [type(t) for t in train_transform(cfg, MEAN, STD).transforms][:2] == [v2.RandomCrop, v2.RandomHorizontalFlip]
    assert AugmentSpec.of(make_config("paper", augment="full", color_jitter=0.5)).jitter == 0.5


def test_randaugment_with_no_ops_is_no_policy():
    assert AugmentSpec.of(make_config("paper", randaugment_ops=0)).policy is None


def test_pipelines_run_from_a_spec_alone():
    spec = AugmentSpec(crop=True, flip=True, policy="randaugment", num_ops=1, magnitude=5, mix_prob=0.0)
    torch.manual_seed(0)
    out = BatchAugment(spec, MEAN, STD)(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    x, soft = BatchMix(spec)(out, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(soft, torch.eye(10)[:4])  # mix_prob 0: one-hot targets, images untouched
    assert torch.equal(x, out)
    ra = [t for t in train_transform(spec, MEAN, STD).transforms if isinstance(t, v2.RandAugment)]
    assert len(ra) == 1 and ra[0].num_ops == 1 and ra[0].magnitude == 5
