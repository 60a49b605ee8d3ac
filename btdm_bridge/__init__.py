"""What the engine and the Blender add-on share, in one home that imports neither of them.

* :mod:`.engine_client`: the HTTP client of the engine service (standard library only), used by
  the add-on and by ``btdm animate --engine`` / ``btdm previs``;
* :mod:`.armature`: the bpy armature sampler (numpy; it is handed bpy objects, never imports
  bpy), used by the add-on on live armatures and by ``btdm motion import take.fbx``;
* :mod:`.files`: the atomic file write both of them use.

Arrows: ``btdm_engine -> btdm_bridge <- blender_addon``; this package imports only the standard
library and numpy, and only relatively inside itself, because ``btdm addon build`` vendors it into
the extension zip as ``_vendor/btdm_bridge`` (``blender_addon/_bridge.py`` picks that copy when it
is there, this one in a checkout). ``tests/test_layering.py`` keeps it that way.
"""
