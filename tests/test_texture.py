"""The texture-transfer prior (btdm_engine.posemaps.texture), the warp-conditioned networks that read it,
the training items that carry it, the Animator's use of it, ``btdm animate --method texture`` and the
plate's unmixed edge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btdm_engine.checkpoints import save_checkpoint
from btdm_engine.diffusion import ScheduleConfig
from btdm_engine.diffusion.samplers import sample_bidirectional, sample_bidirectional_loop, sample_sr3
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config
from btdm_engine.models.config import ModelConfigError
from btdm_engine.models.sr3 import SR3InputError
from btdm_engine.motion.shot import unmix_edges
from btdm_engine.pipeline import Animator, AnimatorError
from btdm_engine.posemaps.parts import flip_iuv
from btdm_engine.posemaps.texture import (
    FILLED,
    HOLE_NEIGHBOURS,
    MIRRORED,
    PIXEL_FILTER,
    SEEN,
    TextureError,
    UVTexture,
    build_texture,
    texture_from_image,
    transfer,
    transfer_frames,
    warp_maps,
)

S = 64


def patch(part: int, top: int, left: int, height: int, width: int, size: int = S,
          u: tuple[int, int] = (0, 255), v: tuple[int, int] = (0, 255)) -> np.ndarray:
    """An IUV map with one rectangle of ``part`` whose U runs left to right over ``u`` and V top to bottom."""
    iuv = np.zeros((size, size, 3), np.uint8)
    iuv[top : top + height, left : left + width, 0] = part
    iuv[top : top + height, left : left + width, 1] = np.linspace(*u, width).round().astype(np.uint8)[None, :]
    iuv[top : top + height, left : left + width, 2] = np.linspace(*v, height).round().astype(np.uint8)[:, None]
    return iuv


def uv_colours(iuv: np.ndarray) -> np.ndarray:
    """A picture whose colour is a function of (U, V): red = U, green = V, blue 0.2; white background."""
    img = np.ones(iuv.shape, np.float32)
    body = iuv[..., 0] > 0
    img[body] = np.stack([iuv[..., 1][body] / 255.0, iuv[..., 2][body] / 255.0, np.full(body.sum(), 0.2)], -1)
    return img


def test_colours_follow_u_and_v_to_another_place_and_size():
    source = patch(2, 8, 8, 48, 40)
    texture = build_texture([(uv_colours(source), source)], size=32)
    target = patch(2, 20, 24, 30, 20)  # the same chart, elsewhere and smaller
    rgb, conf = texture.render(target)
    body = target[..., 0] > 0
    inner = body & (np.roll(body, 2, 0) & np.roll(body, -2, 0) & np.roll(body, 2, 1) & np.roll(body, -2, 1))
    assert np.abs(rgb[inner] - uv_colours(target)[inner]).max() < 0.06
    assert np.allclose(rgb[~body], texture.background) and (conf[~body] == 0).all()
    assert conf[inner].min() > 0.9 and np.allclose(texture.background, 1.0)


def test_the_render_is_filtered_over_the_body_only():
    """A point lookup is sharper than any view of a person: the rendered body passes through a
    PIXEL_FILTER-wide screen-space filter, normalised over the body, so a print's hard edge softens
    over about a pixel while the silhouette keeps the body's own colour (no background drawn in)."""
    iuv = patch(2, 8, 8, 48, 40)
    dark = np.ones(iuv.shape, np.float32)  # a white background; the body dark, its right half red
    body = iuv[..., 0] > 0
    dark[body] = (0.1, 0.1, 0.1)
    dark[8:56, 28:48] = (0.9, 0.1, 0.1)
    rgb, _ = build_texture([(dark, iuv)], size=64).render(iuv)
    assert PIXEL_FILTER > 0
    # the silhouette: the body's colour, not a mixture with the white around it
    assert np.abs(rgb[8:56, 8] - 0.1).max() < 0.02 and np.abs(rgb[8, 12:24] - 0.1).max() < 0.02
    assert np.allclose(rgb[~body], 1.0)
    # across the print's edge (columns 27 | 28): a step that takes a pixel or two, monotone
    red = rgb[30, 22:34, 0]
    assert np.all(np.diff(red) >= -1e-6)
    assert 0.15 < red[27 - 22] < 0.85 and 0.15 < red[28 - 22] < 0.85
    assert abs(red[0] - 0.1) < 0.02 and abs(red[-1] - 0.9) < 0.02


def test_unseen_texels_come_from_the_mirror_part_then_the_partner():
    left_arm = patch(15, 10, 10, 30, 20)  # left upper arm, inside
    red = np.where(left_arm[..., :1] > 0, [0.9, 0.1, 0.1], 1.0).astype(np.float32)
    texture = build_texture([(red, left_arm)], size=16)
    rgb, conf = texture.render(patch(16, 10, 10, 30, 20))  # its mirror twin, never seen
    body = patch(16, 10, 10, 30, 20)[..., 0] > 0
    assert np.allclose(rgb[body], [0.9, 0.1, 0.1], atol=0.02) and np.allclose(conf[body], MIRRORED)
    # the outside of the arm was never seen, nor its mirror: its inside partner's mean colour, confidence 0
    rgb, conf = texture.render(patch(17, 10, 10, 30, 20))
    assert np.allclose(rgb[body], [0.9, 0.1, 0.1], atol=0.02) and np.allclose(conf[body], FILLED)
    assert texture.confidence[15].max() == SEEN


def test_gaps_between_seen_texels_fill_from_their_neighbours_not_the_mirror():
    """A thin limb seen across covers its chart's U in steps wider than a texel: the gaps take the
    seen texels around them, not the mirror limb's colour (checks of the far leg on the near one)."""
    iuv = patch(13, 4, 10, 56, 12)  # a lower leg, 12 px across its chart's whole U (32 texels)
    far = patch(14, 4, 40, 56, 20)  # its mirror twin, seen whole, in shadow
    iuv[far[..., 0] > 0] = far[far[..., 0] > 0]
    image = np.ones(iuv.shape, np.float32)
    image[iuv[..., 0] == 13] = (0.9, 0.85, 0.7)
    image[iuv[..., 0] == 14] = (0.2, 0.2, 0.2)
    texture = build_texture([(image, iuv)], size=32)
    assert HOLE_NEIGHBOURS > 0
    assert np.abs(texture.colour[13] - [0.9, 0.85, 0.7]).max() < 0.03
    assert (texture.confidence[13] == SEEN).all()
    rgb, _ = texture.render(iuv)
    inner = (iuv[..., 0] == 13) & (np.roll(iuv[..., 0], 1, 1) == 13) & (np.roll(iuv[..., 0], -1, 1) == 13)
    assert np.abs(rgb[inner] - [0.9, 0.85, 0.7]).max() < 0.03


def test_the_torso_is_its_own_mirror_with_u_reversed():
    half = patch(2, 8, 8, 40, 20, u=(0, 120))  # only the person's right half of the chest (U < 0.5)
    texture = build_texture([(uv_colours(half), half)], size=32)
    other = patch(2, 8, 8, 40, 20, u=(140, 255))
    rgb, conf = texture.render(other)
    body = other[..., 0] > 0
    expected = uv_colours(patch(2, 8, 8, 40, 20, u=(115, 0)))[body]  # red = the mirrored U
    assert np.abs(rgb[body][:, 0] - expected[:, 0]).mean() < 0.05
    assert np.median(conf[body]) == MIRRORED


def test_several_views_fill_one_texture_and_edge_pixels_count_little():
    iuv = patch(2, 8, 8, 48, 40)
    front = uv_colours(iuv)
    fringe = front.copy()
    body = iuv[..., 0] > 0
    edge = body & ~(np.roll(body, 1, 0) & np.roll(body, -1, 0) & np.roll(body, 1, 1) & np.roll(body, -1, 1))
    fringe[edge] = 1.0  # the silhouette's pixels mixed with the white background
    texture = build_texture([(fringe, iuv)], size=16)
    rgb, _ = texture.render(iuv)
    assert np.abs(rgb[edge] - front[edge]).mean() < 0.08  # not white: the interior's colour won
    left, right = patch(2, 8, 8, 48, 40, u=(0, 100)), patch(2, 8, 8, 48, 40, u=(150, 255))
    both = build_texture([(uv_colours(left), left), (uv_colours(right), right)], size=16)
    assert both.confidence[2].mean() > build_texture([(uv_colours(left), left)], size=16).confidence[2].mean()
    # the one way a job builds its texture: c, then its further views; the texture method's frames from it
    assert np.array_equal(texture_from_image(uv_colours(left), left, size=16, views=[(uv_colours(right), right)]).colour,
                          both.colour)
    with pytest.raises(TextureError, match="needs the appearance's IUV map"):
        texture_from_image(uv_colours(left), None, views=[(uv_colours(right), right)])
    maps = np.stack([left, right, patch(2, 4, 4, 20, 20)])
    frames = list(transfer_frames(both, maps, start=1))
    assert len(frames) == 2 and all(np.array_equal(f, transfer(both, m)) for f, m in zip(frames, maps[1:], strict=True))


def test_blank_texture_errors_and_the_flip_property():
    blank = UVTexture.blank((0.2, 0.3, 0.4))
    rgb, conf = blank.render(patch(5, 4, 4, 10, 10))
    assert blank.empty and np.allclose(rgb, [0.2, 0.3, 0.4]) and not conf.any()
    with pytest.raises(TextureError, match="no body"):
        build_texture([(np.ones((S, S, 3), np.float32), np.zeros((S, S, 3), np.uint8))])
    with pytest.raises(TextureError, match="no views"):
        build_texture([])
    with pytest.raises(TextureError, match="view 0: expected an RGB image"):
        build_texture([(np.ones((S, S), np.float32), patch(2, 4, 4, 10, 10))])
    # a mirrored person (truthful flip of c, g(c) and the target) gives the mirrored warp
    source = np.maximum(patch(2, 8, 8, 40, 24), patch(15, 8, 34, 30, 12))
    target = np.maximum(patch(2, 12, 14, 36, 22), patch(15, 12, 38, 26, 10))
    image = uv_colours(source) * np.where(source[..., :1] == 15, 0.5, 1.0)
    straight = warp_maps(build_texture([(image, source)], size=16), target[None], S)
    mirrored = warp_maps(build_texture([(image[:, ::-1], flip_iuv(source))], size=16), flip_iuv(target)[None], S)
    assert (straight - mirrored.flip(-1)).abs().mean() < 0.02


def test_warp_maps_area_average_to_the_network_size():
    iuv = patch(2, 8, 8, 48, 40)
    texture = build_texture([(uv_colours(iuv), iuv)])
    warp = warp_maps(texture, np.stack([iuv, iuv]), 16)
    assert warp.shape == (2, 4, 16, 16) and warp.dtype == torch.float32
    assert warp.min() >= -1 and warp.max() <= 1
    assert warp[0, 3].max() > 0.9 and warp[0, 3, 0, 0] == -1  # confidence 1 on the body, 0 outside
    assert transfer(texture, iuv).dtype == np.uint8


# -------------------------------------------------------------------- warp-conditioned networks

def test_warp_presets_and_the_networks_read_the_prior():
    assert BTUNetConfig.preset("paper").warp_channels == 0 and SR3Config.preset("paper").warp_channels == 0
    with pytest.raises(ModelConfigError, match="warp_channels"):
        BTUNetConfig.preset("tiny").replace(warp_channels=3)
    torch.manual_seed(0)
    net = BTUNet(BTUNetConfig.preset("tiny-warp")).eval()
    x = torch.randn(2, 3, 32, 32)
    poses = torch.rand(2, 7, 32, 32) * 2 - 1
    other = poses.clone()
    other[:, 3:] = -other[:, 3:]
    logsnr = torch.zeros(2)
    with torch.no_grad():
        a, _ = net(x, x, logsnr, poses, poses)
        b, _ = net(x, x, logsnr, other, other)
    assert (a - b).abs().max() > 1e-4
    sched = ScheduleConfig()
    c = torch.rand(3, 32, 32) * 2 - 1
    seq = torch.rand(5, 7, 32, 32) * 2 - 1
    batched = sample_bidirectional(net, seq, c, steps=2, schedule=sched, generator=torch.Generator().manual_seed(1),
                                   max_batch=2, workers=2)
    literal = sample_bidirectional_loop(net, seq, c, steps=2, schedule=sched, generator=torch.Generator().manual_seed(1))
    assert batched.shape == (5, 3, 32, 32) and torch.allclose(batched, literal, atol=1e-5)

    sr3 = SR3(SR3Config.preset("tiny-warp").replace(resolution=64, channel_mult=(1, 2, 2))).eval()
    with pytest.raises(SR3InputError, match="warp is missing"):
        sr3(torch.randn(1, 3, 64, 64), torch.zeros(1), torch.randn(1, 3, 32, 32))
    frames = list(sample_sr3(sr3, batched, steps=1, schedule=sched, generator=torch.Generator().manual_seed(2),
                             batch=2, warp=lambda a, b: torch.zeros(b - a, 4, 64, 64)))
    assert [f.shape[0] for f in frames] == [2, 2, 1]


@pytest.fixture(scope="module")
def warp_model(tmp_path_factory: pytest.TempPathFactory):
    from tests.test_pipeline import trained_like

    root = tmp_path_factory.mktemp("warp_model")
    torch.manual_seed(0)
    save_checkpoint(root / "btunet", trained_like(BTUNet(BTUNetConfig.preset("tiny-warp")), 1), "btunet",
                    ScheduleConfig())
    config = SR3Config.preset("tiny-warp").replace(resolution=64, channel_mult=(1, 2, 2))
    save_checkpoint(root / "sr3", trained_like(SR3(config), 2), "sr3", ScheduleConfig())
    return root


def test_animator_builds_the_prior_from_g_of_c_and_works_without_it(warp_model):
    from tests.test_pipeline import appearance_image, pose_sequence

    animator = Animator.from_pretrained(warp_model, device="cpu")
    assert animator.uses_warp
    poses = pose_sequence(4, 64)
    c = appearance_image(64)
    kw = dict(steps=2, sr_steps=1, seed=0, workers=1)
    with_prior = animator.animate(poses, c, poses[0], **kw)
    assert with_prior.shape == (4, 64, 64, 3)
    assert (animator.animate(poses, c, poses[0], **kw) == with_prior).all()  # same seed, same frames
    blind = animator.animate(poses, c, None, **kw)  # a photo without its IUV map: the blank prior
    assert np.abs(blind.astype(int) - with_prior).mean() > 0.5
    job = animator.prepare(poses, c, poses[0])
    assert job.poses.shape == (4, 7, 32, 32) and job.appearance_pose.shape == (7, 32, 32)
    tuned = animator.animate(poses, c, poses[0], finetune_steps=1, **kw)
    assert tuned.shape == with_prior.shape
    # a further view (c seen again at frame 3) joins the texture: another prior, other frames; without g(c) refused
    viewed = animator.prepare(poses, c, poses[0], views=[(np.ascontiguousarray(c[:, ::-1]), poses[3])])
    assert (viewed.poses[:, 3:] != job.poses[:, 3:]).any() and (viewed.poses[:, :3] == job.poses[:, :3]).all()
    with pytest.raises(AnimatorError, match="views: further views join the appearance's UV texture"):
        animator.animate(poses, c, None, views=[(c, poses[3])], **kw)


def test_a_model_without_the_prior_refuses_an_unused_iuv_map():
    from tests.test_pipeline import appearance_image, pose_sequence, trained_like

    animator = Animator(trained_like(BTUNet(BTUNetConfig.preset("tiny")), 1), ScheduleConfig(), device="cpu")
    with pytest.raises(AnimatorError, match="only used by fine-tuning"):
        animator.animate(pose_sequence(2, 32), appearance_image(32), pose_sequence(1, 32)[0], steps=1)
    poses, c = pose_sequence(2, 32), appearance_image(32)
    with pytest.raises(AnimatorError, match="views: further views feed the texture-transfer prior, which this model"):
        animator.animate(poses, c, poses[0], views=[(c, poses[1])], steps=1, finetune_steps=1)
    with pytest.raises(AnimatorError, match="takes no texture-transfer prior, which is all they feed"):
        animator.prepare(poses, c, poses[0], views=[(c, poses[1])])  # the stage alone (the service's worker)


def test_training_items_carry_the_prior(tmp_path):
    from training.dataset_format import DatasetManifest
    from training.datasets import FramePairDataset, PairDatasetConfig, SR3FrameDataset
    from training.toy_data import write_toy_dataset

    root = write_toy_dataset(tmp_path / "toy", num_characters=2, sequences_per_character=1, num_frames=4, size=64,
                             test_characters=1)
    seqs = DatasetManifest.load(root).sequence_frames("train")
    pairs = FramePairDataset(seqs, PairDatasetConfig(32, warp=True, warp_resolution=64, warp_drop=0.0))
    item = pairs[(0, 1)]
    assert item["pose"].shape == item["pose_prev"].shape == (7, 32, 32)
    assert item["pose"][6].max() > 0.9  # seen texels on the body
    assert all(torch.equal(item[k], pairs[(0, 1)][k]) for k in item)  # the draws are the item's
    blank = FramePairDataset(seqs, PairDatasetConfig(32, warp=True, warp_resolution=64, warp_drop=1.0))[(0, 1)]
    assert (blank["pose"][6] == -1).all()
    sr3 = SR3FrameDataset(seqs, 64, 32, warp=True, warp_drop=0.0)[(0, 2)]
    assert sr3["warp"].shape == (4, 64, 64)


# ------------------------------------------------------------------------------- the plate's edge

def test_unmixed_edges_leave_no_background_fringe():
    # a dark red figure with a soft (anti-aliased) edge over the generated white background
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    true_alpha = np.clip(28.0 - radius, 0.0, 1.0)  # one pixel of soft edge at radius 27..28
    figure = np.array([120.0, 20.0, 20.0])
    frame = np.round(true_alpha[..., None] * figure + (1 - true_alpha[..., None]) * 255.0).astype(np.uint8)
    body = (radius < 28.5).astype(np.uint8)  # the pose map's foreground reaches over the soft edge
    colour, alpha = unmix_edges(frame, body, 4)
    over_black = alpha[..., None] * colour
    edge = (true_alpha > 0) & (true_alpha < 1) | ((radius > 27) & (radius < 28.5))
    truth = true_alpha[..., None] * figure
    new_excess = np.abs(over_black[edge] - truth[edge]).mean()
    old_excess = np.abs((body[..., None] * frame)[edge] - truth[edge]).mean()  # the body's pixels as they are
    assert new_excess < 0.25 * old_excess, (new_excess, old_excess)
    # no pixel of the edge shows much of the white over black
    old_worst = ((body[..., None] * frame)[edge] - truth[edge]).max()
    assert (over_black[edge] - truth[edge]).max() < 0.5 * old_worst
    assert np.array_equal(colour[radius < 20], frame[radius < 20]) and (alpha[radius < 20] == 1).all()
    assert (alpha[radius > 34] == 0).all()
