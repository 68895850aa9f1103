"""Writes scenes that try to read the volunteer's files (run in a subprocess with bpy:
`python hostile_scenes.py OUT_DIR`). Each plants the file it reads in OUT_DIR/host/, the
stand-in for the volunteer's disk; the scene's name says how it reaches it.
"""

import sys
from pathlib import Path

import bpy

IMPORTERS = {
    "text": ("GeometryNodeImportText", "secret.txt"),
    "csv": ("GeometryNodeImportCSV", "secret.csv"),
    "obj": ("GeometryNodeImportOBJ", "secret.obj"),
    "ply": ("GeometryNodeImportPLY", "secret.ply"),
    "stl": ("GeometryNodeImportSTL", "secret.stl"),
    "vdb": ("GeometryNodeImportVDB", "secret.vdb"),
}
OBJ_VERTICES = 5


def plant(host: Path) -> None:
    host.mkdir(parents=True, exist_ok=True)
    (host / "secret.txt").write_text("node key: 9f8e7d6c5b4a\n")
    (host / "secret.csv").write_text("x,y,z\n1,2,3\n4,5,6\n")
    vertices = "".join(f"v {i} {i % 2} 0\n" for i in range(OBJ_VERTICES))
    (host / "secret.obj").write_text(vertices + "f 1 2 3\nf 3 4 5\n")
    (host / "secret.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
        "property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
        "end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    )
    (host / "secret.stl").write_text(
        "solid s\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 0 1 0\n"
        "endloop\nendfacet\nendsolid s\n"
    )
    (host / "secret.vdb").write_bytes(b"\x20BD\x00not really a grid")


def base() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.render.resolution_x, scene.render.resolution_y = 16, 12


def save(path: Path) -> None:
    bpy.ops.wm.save_as_mainfile(filepath=str(path), compress=True)


def geometry_nodes(name: str) -> bpy.types.NodeTree:
    """A Geometry Nodes modifier on the cube: its geometry joined with what `name` adds."""
    tree = bpy.data.node_groups.new(name, "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    modifier = bpy.data.objects["Cube"].modifiers.new(name, "NODES")
    modifier.node_group = tree
    return tree


def importer(tree: bpy.types.NodeTree, node_type: str) -> bpy.types.Node:
    """The importer, its output turned into geometry joined with the input."""
    source = tree.nodes.new(node_type)
    joined = tree.nodes.new("GeometryNodeJoinGeometry")
    tree.links.new(tree.nodes.new("NodeGroupInput").outputs[0], joined.inputs[0])
    out = source.outputs[0]
    if out.type == "STRING":
        curves = tree.nodes.new("GeometryNodeStringToCurves")
        tree.links.new(out, curves.inputs["String"])
        out = curves.outputs[0]
    realize = tree.nodes.new("GeometryNodeRealizeInstances")  # OBJ and text give instances
    tree.links.new(out, realize.inputs[0])
    tree.links.new(realize.outputs[0], joined.inputs[0])
    tree.links.new(joined.outputs[0], tree.nodes.new("NodeGroupOutput").inputs[0])
    return source


def import_scenes(out: Path, host: Path) -> None:
    for kind, (node_type, planted) in IMPORTERS.items():
        base()
        node = importer(geometry_nodes(f"import_{kind}"), node_type)
        node.inputs["Path"].default_value = str(host / planted)
        save(out / f"import_{kind}.blend")
    # the path comes from a linked String node, the socket itself stays empty
    base()
    node = importer(geometry_nodes("linked"), "GeometryNodeImportOBJ")
    text = node.id_data.nodes.new("FunctionNodeInputString")
    text.string = str(host / "secret.obj")
    node.id_data.links.new(text.outputs[0], node.inputs["Path"])
    save(out / "import_linked.blend")
    # the importer hides in a nested group; the path is the modifier's input (an ID property)
    base()
    outer = geometry_nodes("outer")
    inner = bpy.data.node_groups.new("inner", "GeometryNodeTree")
    inner.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    inner.interface.new_socket("Path", in_out="INPUT", socket_type="NodeSocketString")
    node = inner.nodes.new("GeometryNodeImportOBJ")
    inner.links.new(inner.nodes.new("NodeGroupInput").outputs["Path"], node.inputs["Path"])
    inner.links.new(node.outputs[0], inner.nodes.new("NodeGroupOutput").inputs[0])
    outer.interface.new_socket("Path", in_out="INPUT", socket_type="NodeSocketString")
    group = outer.nodes.new("GeometryNodeGroup")
    group.node_tree = inner
    outer.links.new(outer.nodes.new("NodeGroupInput").outputs["Path"], group.inputs["Path"])
    outer.links.new(group.outputs[0], outer.nodes.new("NodeGroupOutput").inputs[0])
    modifier = bpy.data.objects["Cube"].modifiers["outer"]
    identifier = next(i.identifier for i in outer.interface.items_tree if i.name == "Path")
    modifier[identifier] = str(host / "secret.obj")
    save(out / "import_nested.blend")


def other_scenes(out: Path, host: Path) -> None:
    base()  # vertex positions read from a cache file on disk
    cache = bpy.data.objects["Cube"].modifiers.new("cache", "MESH_CACHE")
    cache.cache_format = "PC2"
    cache.filepath = str(host / "secret.pc2")
    save(out / "mesh_cache.blend")
    base()  # a light's IES profile from a file
    light = bpy.data.lights["Light"]
    light.use_nodes = True
    ies = light.node_tree.nodes.new("ShaderNodeTexIES")
    ies.mode = "EXTERNAL"
    ies.filepath = str(host / "secret.ies")
    light.node_tree.links.new(ies.outputs[0], light.node_tree.nodes["Emission"].inputs[1])
    save(out / "ies.blend")
    base()  # a particle system's point cache on disk (Blender wants a saved file first)
    system = bpy.data.objects["Cube"].modifiers.new("particles", "PARTICLE_SYSTEM")
    save(out / "disk_cache.blend")
    system.particle_system.point_cache.use_disk_cache = True
    save(out / "disk_cache.blend")
    base()  # a fluid domain: its cache directory is on disk
    bpy.data.objects["Cube"].modifiers.new("fluid", "FLUID").fluid_type = "DOMAIN"
    save(out / "fluid.blend")
    base()  # a camera running an OSL file
    camera = bpy.data.cameras["Camera"]
    camera.type, camera.custom_mode = "CUSTOM", "EXTERNAL"
    camera.custom_filepath = str(host / "secret.osl")
    save(out / "camera.blend")
    base()  # a volume object whose grids are a file, not packed
    volume = bpy.data.volumes.new("fog")
    volume.filepath = str(host / "secret.vdb")
    bpy.context.scene.collection.objects.link(bpy.data.objects.new("fog", volume))
    save(out / "volume.blend")
    base()  # a library: another .blend on the volunteer's disk, linked in
    save(host / "library.blend")
    base()
    with bpy.data.libraries.load(str(host / "library.blend"), link=True) as (_, linked):
        linked.materials = ["Material"]
    bpy.data.objects["Cube"].material_slots[0].material = linked.materials[0]
    save(out / "library.blend")


def image_scenes(out: Path, host: Path) -> None:
    """Packed images that still read the disk: a sequence reads frames other than the
    packed one from its path, a tiled image the tiles it has no packed file for."""
    for name, file in (("secret_0001.png", "image_sequence"), ("tile.1001.png", "image_tiles")):
        base()
        planted = bpy.data.images.new("planted", 4, 4)
        planted.filepath_raw, planted.file_format = str(host / name), "PNG"
        planted.save()
        image = bpy.data.images.load(str(host / name))
        image.pack()
        if file == "image_sequence":
            image.source = "SEQUENCE"
        else:
            image.source = "TILED"
            image.tiles.new(1002)  # a tile with no packed file: tile.1002.png from disk
        material = bpy.data.objects["Cube"].material_slots[0].material
        texture = material.node_tree.nodes.new("ShaderNodeTexImage")
        texture.image = image
        material.node_tree.links.new(
            texture.outputs[0], material.node_tree.nodes["Principled BSDF"].inputs[0]
        )
        save(out / f"{file}.blend")


def main(out: Path) -> None:
    host = out / "host"
    plant(host)
    (host / "secret.pc2").write_bytes(b"POINTCACHE2\0" + bytes(20))
    (host / "secret.ies").write_text("IESNA:LM-63-2002\nTILT=NONE\n")
    (host / "secret.osl").write_text("shader camera() {}\n")
    import_scenes(out, host)
    other_scenes(out, host)
    image_scenes(out, host)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
