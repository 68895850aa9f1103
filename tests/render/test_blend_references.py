"""Scenes that would read the volunteer's files are refused by the SDK, the coordinator (node
types it can see without Blender) and the worker, before Blender evaluates them; and every
node type and path property of bpy is known to `sparegrid.wire.blendrefs`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sparegrid.coordinator.kinds.blendfile import BlendError, blend_version
from sparegrid.sdk.errors import InvalidArgumentError
from sparegrid.sdk.render import prepare
from sparegrid.wire.blendrefs import FILE_READING_NODES, NOT_READ, READ_PATHS
from tests.render.conftest import bpy_missing

if bpy_missing:
    pytest.skip("bpy (Blender) is not installed", allow_module_level=True)

IMPORTS = ("text", "csv", "obj", "ply", "stl", "vdb")
OTHERS = {
    "import_linked": "GeometryNodeImportOBJ",  # path from a linked String node
    "import_nested": "GeometryNodeImportOBJ",  # in a nested group, path from the modifier
    "mesh_cache": "secret.pc2",
    "ies": "secret.ies",
    "disk_cache": "point cache kept on disk",
    "fluid": "FluidDomainSettings.cache_directory",
    "camera": "secret.osl",
    "image_sequence": "secret_0001.png",  # packed: frame 1 only, the others from disk
    "image_tiles": "tile.<UDIM>.png",  # tile 1001 packed, tile 1002 from disk
}
# Blender can pack these: the SDK does, the worker refuses them unpacked.
PACKABLE = {"volume": "secret.vdb", "library": "library.blend"}
# Path properties of structs that are never part of a scene's data (the user's
# preferences, the file browser, operators, the asset system, runtime results).
OUTSIDE_SCENES = (
    "Preferences",
    "FileBrowser",
    "FileSelect",
    "Operator",
    "Asset",
    "UserExtensionRepo",
    "UserAssetLibrary",
    "Theme",
    "StudioLight",
    "ScriptDirectory",
    "PathCompare",
    "BlendImportContextLibrary",
    "PrimitiveString",
    "PackedFile",
    "StringAttributeValue",
    "FileHandler",
    "RenderEngine",
    "WindowManager",
    "Xr",
)
# Node types that name a file only through a datablock (checked as a datablock: packed
# or refused), or whose path is an output or a name.
NODES_THROUGH_DATABLOCKS = {
    "CompositorNodeImage": "Image",
    "CompositorNodeMovieClip": "MovieClip",
    "CompositorNodeMovieDistortion": "MovieClip",
    "CompositorNodeStabilize": "MovieClip",
    "CompositorNodeKeyingScreen": "MovieClip",
    "CompositorNodePlaneTrackDeform": "MovieClip",
    "CompositorNodeTrackPos": "MovieClip",
    "CompositorNodeMask": "Mask (no file)",
    "CompositorNodeOutputFile": "writes; muted on workers",
    "GeometryNodeImageTexture": "Image",
    "GeometryNodeInputImage": "Image",
    "GeometryNodeStringToCurves": "VectorFont",
    "ShaderNodeTexImage": "Image",
    "ShaderNodeTexEnvironment": "Image",
    "TextureNodeImage": "Image",
    "TextureNodeOutput": "its filepath is a name",
    "ShaderNodeTexPointDensity": "an object's particles",
    "CompositorNodeCryptomatteV2": "Image",
    "NodeFrame": "a Text datablock as its label",
}

ABSTRACT_NODES = {"Node", "NodeInternal", "NodeGroup", "CompositorNode", "FunctionNode"}
ABSTRACT_NODES |= {"GeometryNode", "ShaderNode", "TextureNode"}
# can no longer be added, only loaded from old files; their inputs are colors and values
LEGACY_NODES = {"CompositorNodeGamma", "TextureNodeCompose", "TextureNodeDecompose"}


def run_bpy(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    script = Path(__file__).with_name("hostile_scenes.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


OPEN_EACH = """
    import json, sys
    from pathlib import Path
    from sparegrid.worker.executors.base import ExecutorError
    from sparegrid.worker.executors.render.blender import load_bpy, open_scene
    bpy = load_bpy(Path(sys.argv[1]) / "profile")
    out = {}
    for name in sys.argv[2:]:
        try:
            open_scene(bpy, Path(sys.argv[1]) / name)
            out[name] = "opened"
        except ExecutorError as exc:
            out[name] = f"{exc.code}: {exc.message}"
    print(json.dumps(out))
"""


def test_the_worker_refuses_every_scene_that_reads_a_host_file(hostile: Path) -> None:
    names = [f"import_{k}.blend" for k in IMPORTS] + [f"{n}.blend" for n in OTHERS | PACKABLE]
    out = last_json(run_bpy(OPEN_EACH, str(hostile), *names))
    for kind in IMPORTS:
        refused = out[f"import_{kind}.blend"]
        assert refused.startswith("BAD_INPUT: ") and "not packed" in refused
        assert next(n for n in FILE_READING_NODES if n.lower().endswith(kind)) in refused
    for name, named in (OTHERS | PACKABLE).items():
        assert out[f"{name}.blend"].startswith("BAD_INPUT: ") and named in out[f"{name}.blend"]


def test_an_importer_reads_nothing_even_while_the_scene_loads(hostile: Path) -> None:
    """Blender evaluates Geometry Nodes as it opens a file: the check runs before that.
    A FIFO in place of the planted file would block a read forever."""
    fifo = hostile / "host" / "secret.txt"
    fifo.unlink()
    os.mkfifo(fifo)
    try:
        out = last_json(run_bpy(OPEN_EACH, str(hostile), "import_text.blend", timeout=60))
    finally:
        fifo.unlink()
        fifo.write_text("node key: 9f8e7d6c5b4a\n")
    assert "GeometryNodeImportText" in out["import_text.blend"]


def test_in_plain_blender_the_planted_file_becomes_geometry(hostile: Path) -> None:
    """Why: without the check, the file's content is what renders."""
    proc = run_bpy(
        """
        import json, sys, bpy
        bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False, use_scripts=False)
        cube = bpy.data.objects["Cube"].evaluated_get(bpy.context.evaluated_depsgraph_get())
        print(json.dumps(len(cube.data.vertices)))
        """,
        str(hostile / "import_obj.blend"),
    )
    assert last_json(proc) == 8 + 5  # the cube's vertices and the planted OBJ's


# a tile the client has is packed by the SDK, one it lacks is MISSING_FILES there
@pytest.mark.parametrize(
    "name", [f"import_{k}" for k in IMPORTS] + sorted(set(OTHERS) - {"image_tiles"})
)
def test_the_sdk_refuses_before_upload(hostile: Path, name: str) -> None:
    options = {"frames": 1, "samples": 1, "resolution": None, "format": "png"}
    options |= {"depth": None, "tiles": None, "chunk": 1}
    with pytest.raises(InvalidArgumentError) as info, prepare(hostile / f"{name}.blend", **options):
        pass
    assert info.value.code == "UNPACKABLE_FILES"


@pytest.mark.parametrize("kind", [*IMPORTS, "linked", "nested"])
def test_the_coordinator_sees_importer_nodes_without_blender(hostile: Path, kind: str) -> None:
    with pytest.raises(BlendError, match="GeometryNodeImport"):
        blend_version(hostile / f"import_{kind}.blend")


def test_it_cannot_see_paths_without_blender(hostile: Path) -> None:
    """What the coordinator leaves to the SDK and the worker: a path needs the DNA."""
    assert blend_version(hostile / "mesh_cache.blend") == "5.0"


def test_a_scene_too_large_to_walk_is_refused_not_half_checked(hostile: Path) -> None:
    proc = run_bpy(
        """
        import json, sys, bpy
        from sparegrid.wire import blendrefs
        bpy.ops.wm.open_mainfile(filepath=sys.argv[1], load_ui=False, use_scripts=False)
        blendrefs._WALK_LIMIT = 3
        print(json.dumps([r.describe() for r in blendrefs.external_references(bpy)]))
        """,
        str(hostile / "host" / "library.blend"),  # a plain scene
    )
    assert last_json(proc) == ["more than 3 structures to check (the scene)"]


INTROSPECT = """
    import json, re, bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    SUBTYPES = {"FILE_PATH", "DIR_PATH", "FILE_NAME"}
    paths = []
    for name in dir(bpy.types):
        rna = getattr(getattr(bpy.types, name), "bl_rna", None)
        if rna is None:
            continue
        for p in rna.properties:
            named = re.search(r"path|file|dir", p.identifier)
            if p.type != "STRING" or not (p.subtype in SUBTYPES or named):
                continue
            inherited = rna.base is not None and p.identifier in rna.base.properties
            if not inherited and p.identifier not in ("data_path", "rna_path"):
                paths.append(f"{rna.identifier}.{p.identifier}")
    FILE_IDS = {"Image", "MovieClip", "VectorFont", "Sound", "Volume", "CacheFile", "Text"}
    FILE_IDS |= {"Library", "Mask"}
    trees = {t: bpy.data.node_groups.new(t, t) for t in
             ("GeometryNodeTree", "ShaderNodeTree", "CompositorNodeTree", "TextureNodeTree")}
    nodes, unplaced = {}, []
    for name in dir(bpy.types):
        cls = getattr(bpy.types, name)
        if not (isinstance(cls, type) and issubclass(cls, bpy.types.Node)):
            continue
        node = None
        for tree in trees.values():
            try:
                node = tree.nodes.new(name)
                break
            except RuntimeError:
                continue
        if node is None:  # an abstract base or a legacy type: its RNA is all there is
            unplaced.append(name)
        why = []
        for s in [*node.inputs, *node.outputs] if node is not None else []:
            if s.bl_idname == "NodeSocketStringFilePath" or (
                s.type == "STRING" and re.search(r"path|file|dir", s.name, re.I)):
                why.append(f"socket {s.name}")
        for p in cls.bl_rna.properties:
            if p.type == "STRING" and p.subtype in SUBTYPES:
                why.append(f"property {p.identifier}")
            if p.type == "POINTER" and p.fixed_type.identifier in FILE_IDS:
                why.append(f"datablock {p.fixed_type.identifier}")
        if why:
            nodes[name] = why
    print(json.dumps({"paths": sorted(paths), "nodes": nodes, "unplaced": unplaced}))
"""


@pytest.fixture(scope="module")
def introspected() -> dict[str, Any]:
    result: dict[str, Any] = last_json(run_bpy(INTROSPECT))
    return result


def test_every_path_property_of_blender_is_classified(introspected: dict[str, Any]) -> None:
    known = {f"{s}.{p}" for table in (READ_PATHS, NOT_READ) for s, ps in table.items() for p in ps}
    unknown = [
        p for p in introspected["paths"] if p not in known and not p.startswith(OUTSIDE_SCENES)
    ]
    assert unknown == [], "classify these in sparegrid.wire.blendrefs (READ_PATHS or NOT_READ)"
    stale = sorted(known - set(introspected["paths"]))
    assert stale == [], "bpy no longer has these: drop them from blendrefs"


def test_every_node_type_that_can_name_a_file_is_known(introspected: dict[str, Any]) -> None:
    unknown = {
        name: why
        for name, why in introspected["nodes"].items()
        if name not in FILE_READING_NODES
        and name not in READ_PATHS
        and name not in NODES_THROUGH_DATABLOCKS
    }
    assert unknown == {}, "refuse these (FILE_READING_NODES) or say why they are safe"
    assert set(FILE_READING_NODES) <= set(introspected["nodes"]), "an importer went away?"
    unplaced = [
        n
        for n in introspected["unplaced"]
        if n not in ABSTRACT_NODES and not n.endswith("CustomGroup") and n not in LEGACY_NODES
    ]
    assert unplaced == [], "node types no tree accepts: read their sockets, then list them"
