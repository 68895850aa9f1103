"""Blender renders with Cycles. `executor` parses and checks render tasks (importing it
fails without bpy, so the plugin is skipped there); `blender` drives bpy, which it imports
only when a scene is rendered, in an executor process."""
