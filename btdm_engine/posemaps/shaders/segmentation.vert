#version 330 core
// IUV pass (btdm_engine.posemaps.renderer): pyrender's segmentation pass, which renders without
// multisampling, lighting or blending, with the per-vertex colour (I/255, U, V, 1) passed on.
layout(location = 0) in vec3 position;
layout(location = COLOR_0_LOC) in vec4 color_0;
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 P;
uniform mat4 V;
uniform mat4 M;

out vec4 iuv;

void main()
{
    gl_Position = P * V * M * inst_m * vec4(position, 1.0);
    iuv = color_0;
}
