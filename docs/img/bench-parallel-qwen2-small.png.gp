set terminal pngcairo size 900,540
set output 'docs/img/bench-parallel-qwen2-small.png'
set title 'ferry bench: qwen2-small'
set xlabel 'sequences decoded at once'
set logscale x 2
set ylabel 'decode tokens/s (all sequences)'
set yrange [0:*]
set key outside right
set grid
plot 'docs/img/bench-parallel-qwen2-small.png.dat' index 0 using 1:2 with linespoints lw 2 lc 1 title 'budget 50% pin int4', '' index 0 using 1:3 with lines dt 2 lc 1 title 'budget 50% pin int4 bound', 'docs/img/bench-parallel-qwen2-small.png.dat' index 1 using 1:2 with linespoints lw 2 lc 2 title 'budget all pin int4', '' index 1 using 1:3 with lines dt 2 lc 2 title 'budget all pin int4 bound'
