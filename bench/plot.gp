# bench/plot.gp - bench/run's chart (gnuplot, PNG).
#
#   gnuplot -e "datafile='bench/results/run-X.dat'" -e "outfile='run-X.png'" \
#           -e "metafile='bench/results/run-X.meta'" bench/plot.gp
# (the .meta file sets `subtitle`; bench/report.py writes both files)
#
# Grouped bars per scenario, normalised to flowgate = 1, the absolute value
# above each bar. Top: proxy CPU per request (S5: KiB per idle connection),
# lower is better. Bottom: requests/s, higher is better.

if (!exists("datafile")) datafile = "bench/results/latest.dat"
if (!exists("outfile")) outfile = "bench/results/latest.png"
if (!exists("subtitle")) subtitle = ""
if (exists("metafile")) load metafile

set terminal pngcairo size 1400,950 enhanced font "DejaVu Sans,11"
set output outfile

set style fill solid 0.85 border -1
set boxwidth 0.26
set grid ytics lc rgb "#dddddd"
set key tmargin center horizontal
set xtics nomirror scale 0
set ytics nomirror
set yrange [0:*]
set offsets 0.5, 0.5, 0.15, 0
set format y "%.1f"

c_fg = "#1f77b4"; c_ng = "#2ca02c"; c_hp = "#d62728"
w = 0.27

set multiplot layout 2,1 title "flowgate vs nginx 1.22 vs HAProxy 2.6 — one worker each, TLS on loopback\n".subtitle font ",13"

set title "Proxy CPU per request (S3: per full handshake; S5: memory per idle connection) — flowgate = 1, lower is better"
set ylabel "relative to flowgate"
plot datafile index 0 using ($1-w):3 with boxes lc rgb c_fg title "flowgate", \
     ''       index 0 using ($1):4   with boxes lc rgb c_ng title "nginx", \
     ''       index 0 using ($1+w):5 with boxes lc rgb c_hp title "HAProxy", \
     ''       index 0 using ($1-w):9:6 with labels offset 0,0.7 font ",8" notitle, \
     ''       index 0 using ($1):10:7   with labels offset 0,0.7 font ",8" notitle, \
     ''       index 0 using ($1+w):11:8 with labels offset 0,0.7 font ",8" notitle, \
     ''       index 0 using 1:(NaN):xtic(2) notitle, \
     1 with lines lc rgb "#555555" dt 2 notitle

set title "Requests per second — flowgate = 1, higher is better"
plot datafile index 1 using ($1-w):3 with boxes lc rgb c_fg title "flowgate", \
     ''       index 1 using ($1):4   with boxes lc rgb c_ng title "nginx", \
     ''       index 1 using ($1+w):5 with boxes lc rgb c_hp title "HAProxy", \
     ''       index 1 using ($1-w):9:6 with labels offset 0,0.7 font ",8" notitle, \
     ''       index 1 using ($1):10:7   with labels offset 0,0.7 font ",8" notitle, \
     ''       index 1 using ($1+w):11:8 with labels offset 0,0.7 font ",8" notitle, \
     ''       index 1 using 1:(NaN):xtic(2) notitle, \
     1 with lines lc rgb "#555555" dt 2 notitle

unset multiplot
