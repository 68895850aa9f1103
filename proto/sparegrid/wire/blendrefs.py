"""What a Blender scene may read: its own packed data, never a file on the volunteer's disk.

A scene renders on a stranger's machine, so anything in it that names a path is a way to
read that machine's files (the node key, the home directory, other clients' inputs in the
cache) into rendered pixels. The rule is an allow-list: a scene may reference packed data
only. Refused, with the list of what was found:

- a node type that reads a file (`FILE_READING_NODES`: Geometry Nodes' Import CSV, OBJ,
  PLY, STL, Text and VDB), wherever it is and whatever its path socket is linked to: the
  path can come from any string, so no value is safe;
- a non-empty path in any RNA property that Blender reads while loading or rendering
  (`READ_PATHS`), on a datablock with users, unless that datablock is packed or the
  property is not in use (an IES or OSL node in internal mode, a cache not baked, a
  Geometry Nodes bake packed into the file; an image sequence or movie, packed or not,
  and a tiled image with a tile not packed: Blender reads those frames and tiles from
  the path);
- a point cache kept on disk (`use_disk_cache`).

Every path property of Blender's RNA is either in `READ_PATHS` or in `NOT_READ` (paths
Blender writes, or keeps as names); `tests/render/test_blend_references.py` introspects
bpy and fails when a new one appears that neither lists, or a new node type that takes a
file path.

The functions take the `bpy` module as an argument: this module never imports it. The
SDK (in `blendtool`, before upload) and the worker (before rendering) run them inside
Blender; the coordinator, which has no Blender, looks for `FILE_READING_NODES` in the
raw file (`sparegrid.coordinator.kinds.blendfile`).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

FILE_READING_NODES = frozenset(
    {
        "GeometryNodeImportCSV",
        "GeometryNodeImportOBJ",
        "GeometryNodeImportPLY",
        "GeometryNodeImportSTL",
        "GeometryNodeImportText",
        "GeometryNodeImportVDB",
    }
)
# struct -> string properties naming a file or directory Blender reads for a render
READ_PATHS: dict[str, tuple[str, ...]] = {
    "Image": ("filepath",),
    "Library": ("filepath",),
    "Volume": ("filepath",),
    "Sound": ("filepath",),
    "VectorFont": ("filepath",),
    "CacheFile": ("filepath",),
    "CacheFileLayer": ("filepath",),
    "MovieClip": ("filepath",),
    "MovieClipProxy": ("directory",),
    "MeshCacheModifier": ("filepath",),
    "MultiresModifier": ("filepath",),
    "OceanModifier": ("filepath",),
    "FluidDomainSettings": ("cache_directory",),
    "PointCache": ("filepath",),
    "PointCacheItem": ("filepath",),
    "NodesModifier": ("bake_directory",),
    "NodesModifierBake": ("directory",),
    "ShaderNodeTexIES": ("filepath",),
    "ShaderNodeScript": ("filepath",),
    "Camera": ("custom_filepath",),
    "NodeSocketStringFilePath": ("default_value",),
    "NodeTreeInterfaceSocketStringFilePath": ("default_value",),
    "ImageStrip": ("directory",),
    "MovieStrip": ("filepath",),
    "StripElement": ("filename",),
    "StripProxy": ("directory", "filepath"),
    "SequenceEditor": ("proxy_dir",),
}
# struct -> path properties that are in a scene's data but never read for a render
NOT_READ: dict[str, tuple[str, ...]] = {
    "BakeSettings": ("filepath",),  # bake output; workers do not bake
    "CompositorNodeOutputFile": ("directory", "file_name"),  # muted on workers
    "DynamicPaintSurface": ("image_output_path",),  # bake output
    "CollectionExport": ("filepath",),  # exporter settings, run by an operator only
    "LibraryWeakReference": ("filepath", "id_name"),  # where an appended ID came from
    "ImagePackedFile": ("filepath",),  # the name of a packed tile
    "Text": ("filepath",),  # the text itself is stored in the file
    "TextureNodeOutput": ("filepath",),  # a name
    "BlendData": ("filepath",),  # the scene's own file
    "VolumeGrids": ("frame_filepath",),  # derived from Volume.filepath
    "Image": ("filepath_raw",),  # Image.filepath unexpanded: checked as filepath
    "CacheObjectPath": ("path",),  # an object's path inside a cache file
    "MeshSequenceCacheModifier": ("object_path",),  # the same, the file is a CacheFile
    "TransformCacheConstraint": ("object_path",),  # the same
    "RenderSettings": ("filepath", "file_extension"),  # the output and its extension
    "SceneRenderView": ("file_suffix",),  # a suffix of output names
}
_READ_FLAGS = {"PointCache": ("use_disk_cache", "a point cache kept on disk")}
# datablocks whose file Blender can pack into the .blend (File > External Data > Pack)
PACKABLE = frozenset({"Image", "Library", "Volume", "Sound", "VectorFont"})
# Runtime and interface structs: never descended into (the depsgraph would evaluate)
_SKIP_TYPES = frozenset(
    {"Depsgraph", "DepsgraphObjectInstance", "DepsgraphUpdate", "Window", "Screen", "Area"}
    | {"Region", "WindowManager", "Preferences", "BlendData", "Context", "UILayout"}
    | {"AssetMetaData", "AssetRepresentation", "ImagePreview", "PreviewImage", "AnimViz"}
)
_WALK_LIMIT = 2_000_000  # structs visited per scene: a hostile file must not hang the check


@dataclass(frozen=True)
class Reference:
    """One thing in a scene that would be read from disk."""

    path: str  # as written in the file ("" for a node type or a flag)
    where: str  # the datablock and the way to the property
    what: str  # "Image.filepath", "a GeometryNodeImportOBJ node, which reads ..."
    packable: bool  # Blender can pack it (an image, font, sound, volume, library)
    block: Any = None  # the datablock (for its library, when resolving a relative path)

    def describe(self) -> str:
        return (
            f"{self.path} ({self.where}, {self.what})"
            if self.path
            else f"{self.what} ({self.where})"
        )


def external_references(bpy: Any) -> list[Reference]:
    """What the open scene would read from disk; empty when it may render on a
    volunteer's machine."""
    walker = _Walker(bpy)
    for block in _datablocks(bpy):
        if block.users:
            walker.block = block
            walker.visit(block, f"{_id_kind(block)} {block.name!r}")
    if len(walker.seen) > _WALK_LIMIT:  # what was not walked cannot pass
        walker.block = None
        walker._found("", "the scene", f"more than {_WALK_LIMIT} structures to check", False)
    return walker.found


def _datablocks(bpy: Any) -> Iterator[Any]:
    for name in dir(bpy.data):
        if name in ("window_managers", "screens", "workspaces"):
            continue
        collection: Any = getattr(bpy.data, name, None)
        if type(collection).__name__ == "bpy_prop_collection":
            yield from collection


def _id_kind(block: Any) -> str:
    return str(block.bl_rna.identifier).lower()


class _Walker:
    """Walks the RNA of datablocks, descending only where a path can be reached."""

    def __init__(self, bpy: Any) -> None:
        self.types = bpy.types
        self.reach = _reachable(bpy)
        self.plans: dict[str, _Plan] = {}
        self.seen: set[tuple[str, int]] = set()
        self.found: list[Reference] = []
        self.block: Any = None

    def visit(self, struct: Any, where: str, parent: Any = None) -> None:
        name = struct.bl_rna.identifier
        key = (name, struct.as_pointer())
        if key in self.seen or len(self.seen) > _WALK_LIMIT:
            return  # past the limit, the scene is refused whole
        self.seen.add(key)
        if name in FILE_READING_NODES:
            self._found("", where, f"a {name} node, which reads a file from disk", False)
        plan = self._plan(struct.bl_rna)
        for prop in plan.paths:
            value = _get(struct, prop)
            if isinstance(value, str) and value and not _exempt(name, struct, parent, value):
                self._found(value, where, f"{name}.{prop}", name in PACKABLE)
        flag = _READ_FLAGS.get(name)
        if flag is not None and _get(struct, flag[0]) is True:
            self._found("", where, flag[1], False)
        for prop, many in plan.children:
            child = _get(struct, prop)
            items = list(child) if many and child is not None else [child]
            for i, item in enumerate(items):
                if item is not None and not self._foreign_id(item):
                    label = f"{prop}[{i}]" if many else prop
                    self.visit(item, f"{where} {_label(item, label)}", struct)

    def _found(self, path: str, where: str, what: str, packable: bool) -> None:
        self.found.append(Reference(path, where, what, packable, self.block))

    def _foreign_id(self, item: Any) -> bool:
        """An ID reached through a pointer is walked on its own, unless embedded."""
        return isinstance(item, self.types.ID) and not item.is_embedded_data

    def _plan(self, rna: Any) -> "_Plan":
        plan = self.plans.get(rna.identifier)
        if plan is None:
            plan = _Plan(rna, self.reach)
            self.plans[rna.identifier] = plan
        return plan


class _Plan:
    """For one struct type: its read paths, and the properties that can lead to one."""

    def __init__(self, rna: Any, reach: set[str]) -> None:
        self.paths = [
            p.identifier
            for p in rna.properties
            if p.type == "STRING" and p.identifier in READ_PATHS.get(rna.identifier, ())
        ]
        self.children: list[tuple[str, bool]] = []
        for p in rna.properties:
            if p.type in ("POINTER", "COLLECTION") and p.identifier != "rna_type":
                target = p.fixed_type.identifier
                if target in reach:
                    self.children.append((p.identifier, p.type == "COLLECTION"))


_REACH_CACHE: dict[str, set[str]] = {}
# IDs that live inside another datablock (a material's node tree, a scene's collection):
# walked through their owner. Any other ID reached by a pointer is walked on its own.
_EMBEDDABLE = frozenset({"NodeTree", "Collection"})


def _reachable(bpy: Any) -> set[str]:
    """Struct types from which a read path or a file-reading node can be reached: those
    that have one, whatever points to them, and their base types (a collection of
    Modifier holds a MeshCacheModifier). Large collections of plain data (vertices,
    keyframes, particles) reach nothing and are never walked."""
    cached = _REACH_CACHE.get(bpy.app.version_string)
    if cached is not None:
        return cached
    links: dict[str, list[str]] = {}
    bases: dict[str, str | None] = {}
    ids = set()
    for name in dir(bpy.types):
        cls = getattr(bpy.types, name)
        rna = getattr(cls, "bl_rna", None)
        if rna is None or rna.identifier in _SKIP_TYPES:
            continue
        if isinstance(cls, type) and issubclass(cls, bpy.types.ID):
            ids.add(rna.identifier)
        bases[rna.identifier] = rna.base.identifier if rna.base is not None else None
        links[rna.identifier] = [
            p.fixed_type.identifier
            for p in rna.properties
            if p.type in ("POINTER", "COLLECTION") and p.identifier != "rna_type"
        ]
    foreign = ids - _EMBEDDABLE
    reach = {n for n in links if n in READ_PATHS or n in _READ_FLAGS or n in FILE_READING_NODES}
    changed = True
    while changed:
        changed = False
        for name, targets in links.items():
            if name not in reach and any(t in reach and t not in foreign for t in targets):
                reach.add(name)
                changed = True
            base = bases.get(name) if name in reach else None
            if base is not None and base not in reach:
                reach.add(base)
                changed = True
    _REACH_CACHE[bpy.app.version_string] = reach
    return reach


def _get(struct: Any, prop: str) -> Any:
    try:
        return getattr(struct, prop)
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


def _label(item: Any, fallback: str) -> str:
    name = _get(item, "name")
    return f"{item.bl_rna.identifier} {name!r}" if isinstance(name, str) and name else fallback


def _packed(struct: Any, parent: Any, value: str) -> bool:
    return _get(struct, "packed_file") is not None


def _image(struct: Any, parent: Any, value: str) -> bool:
    """Packed data stands in for one file only: a sequence or a movie reads its other
    frames from the path (packing one frame exempted them all), and a tiled image reads
    from disk every tile it has no packed file for."""
    source = _get(struct, "source")
    if source == "TILED":
        packed = {_get(p, "tile_number") for p in _get(struct, "packed_files") or ()}
        return all(_get(t, "number") in packed for t in _get(struct, "tiles") or ())
    if source in ("SEQUENCE", "MOVIE"):
        return False
    return source != "FILE" or _packed(struct, parent, value)


def _library(struct: Any, parent: Any, value: str) -> bool:
    return _packed(struct, parent, value) or _get(struct, "is_archive") is True


def _font(struct: Any, parent: Any, value: str) -> bool:
    return _packed(struct, parent, value) or value == "<builtin>"


def _internal(struct: Any, parent: Any, value: str) -> bool:
    return bool(_get(struct, "mode") == "INTERNAL")


def _camera(struct: Any, parent: Any, value: str) -> bool:
    return bool(_get(struct, "type") != "CUSTOM" or _get(struct, "custom_mode") == "INTERNAL")


def _bake_packed(struct: Any, parent: Any, value: str) -> bool:
    target = _get(struct, "bake_target")
    if target == "INHERIT" and parent is not None:
        target = _get(parent, "bake_target")
    return bool(target == "PACKED")


_EXEMPT: dict[str, Callable[[Any, Any, str], bool]] = {
    "Image": _image,
    "Library": _library,
    "Volume": _packed,
    "Sound": _packed,
    "VectorFont": _font,
    "ShaderNodeTexIES": _internal,
    "ShaderNodeScript": _internal,
    "Camera": _camera,
    "OceanModifier": lambda s, p, v: _get(s, "is_cached") is not True,
    "MultiresModifier": lambda s, p, v: _get(s, "is_external") is not True,
    "PointCache": lambda s, p, v: _get(s, "use_external") is not True,
    "PointCacheItem": lambda s, p, v: _get(s, "use_external") is not True,
    "NodesModifier": _bake_packed,
    "NodesModifierBake": _bake_packed,
}


def _exempt(name: str, struct: Any, parent: Any, value: str) -> bool:
    """The path is set but not read: the data is packed, or the feature is off."""
    rule = _EXEMPT.get(name)
    return rule is not None and rule(struct, parent, value)
