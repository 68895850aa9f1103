"""Small real models for the inference tests: a ViT-style encoder with nn.MultiheadAttention
(the kind that failed when exported on a CPU and run on CUDA) and a few special cases."""

import zipfile
from pathlib import Path

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Encoder(nn.Module):
    """ViT-B/16 in miniature: patches, a class token, attention blocks, a head."""

    def __init__(
        self, dim: int = 32, depth: int = 2, heads: int = 4, image: int = 16, patch: int = 4
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.blocks(x)
        return self.head(self.ln(x[:, 0]))


class TwoHeads(nn.Module):
    """Two inputs, a dict of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": self.a(x + y), "diff": self.b(x - y)}


class Flatten(nn.Module):
    """Its graph holds a view that is only legal for the strides seen while tracing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 2).view(x.shape[0], -1)


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def export(model: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        model.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example)
    )
    torch.export.save(program, path)
    return path


def rewrite(source: Path, dest: Path, edit: dict[str, bytes | None], add: dict[str, bytes]) -> Path:
    """A copy of an archive with entries replaced (None: removed) or added (names without
    the root folder)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as out:
        root = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            name = info.filename[len(root) + 1 :]
            if name in edit:
                if edit[name] is not None:
                    out.writestr(info.filename, edit[name])
                continue
            out.writestr(info.filename, src.read(info.filename))
        for name, data in add.items():
            out.writestr(f"{root}/{name}", data)
    return dest


def read(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split("/")[0]
        return z.read(f"{root}/{name}")
