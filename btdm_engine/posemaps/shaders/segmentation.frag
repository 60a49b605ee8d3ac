#version 330 core
// I is constant over a face (all three vertices carry it), so interpolation keeps it exact;
// U and V are interpolated perspective-correctly. No gamma: the value is written as is.
in vec4 iuv;
out vec4 frag_color;

void main()
{
    frag_color = vec4(iuv.rgb, 1.0);
}
