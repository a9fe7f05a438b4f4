package main

import (
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strings"
)

var (
	colBG    = color.RGBA{255, 255, 255, 255}
	colText  = color.RGBA{20, 20, 20, 255}
	colGrid  = color.RGBA{220, 220, 220, 255}
	colSys   = map[string]color.RGBA{"etcd": {150, 150, 150, 255}, "cairn": {30, 120, 180, 255}}
	colGood  = color.RGBA{20, 130, 40, 255}
	colBad   = color.RGBA{190, 40, 30, 255}
	metricUI = map[string]string{
		"qps": "throughput, ops/s", "p50_ms": "p50 latency, ms", "p99_ms": "p99 latency, ms",
		"rss_mib": "RSS MiB loaded", "rss_restart_mib": "RSS MiB restarted", "restart_s": "restart, s", "cpu_us": "server CPU us/op",
		"tool_us": "tool CPU us/op",
	}
)

// writePlot draws one PNG: a row per table row, a cell per metric, and in
// each cell a bar for etcd and one for Cairn scaled to the larger of the
// two (so each cell shows the ratio; the numbers are printed beside the
// bars). Higher is better for throughput, lower for everything else.
func writePlot(path string, rep *Report) error {
	const (
		scale   = 2
		labelW  = 400
		cellW   = 300
		cellH   = 74
		top     = 64
		barH    = 18
		ncols   = 5
		margin  = 10
		valueW  = 90
		headerH = 22
	)
	w := labelW + ncols*cellW + margin
	h := top + headerH + len(rep.Rows)*cellH + 40
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)

	drawText(img, margin, 10, "Cairn vs etcd, 3 members on loopback, medians", scale, colText)
	sub := strings.TrimSpace(rep.Env["date"] + "  " + rep.Env["mode"] + "  " + rep.Env["cpu"])
	drawText(img, margin, 34, sub, 1, colText)
	// Legend.
	lx := w - 260
	for i, s := range systems {
		fillRect(img, lx+i*120, 12, 16, 14, colSys[s])
		drawText(img, lx+i*120+22, 12, s, scale, colText)
	}
	for c, m := range []string{"qps", "p50_ms", "p99_ms", "cpu_us", "tool_us"} {
		drawText(img, labelW+c*cellW, top, metricUI[m], scale, colText)
	}
	y0 := top + headerH
	for i, r := range rep.Rows {
		y := y0 + i*cellH
		fillRect(img, margin, y, w-2*margin, 1, colGrid)
		title := r.Title
		if n := (labelW - margin) / (6 * scale); len([]rune(title)) > n {
			title = string([]rune(title)[:n])
		}
		drawText(img, margin, y+10, title, scale, colText)
		if r.Met != "-" {
			c := colGood
			txt := "target met"
			if r.Met != "yes" {
				c, txt = colBad, "target not met"
			}
			drawText(img, margin, y+34, txt+": "+r.Target, 1, c)
		}
		for c, m := range r.Metrics {
			if c >= ncols {
				break
			}
			x := labelW + c*cellW
			if r.ID == "f-rss" || r.ID == "f-restart" {
				drawText(img, x, y+4, metricUI[m], 1, colText)
			}
			maxV := 0.0
			for _, s := range systems {
				maxV = max(maxV, r.Cells[s][m].Median)
			}
			for k, s := range systems {
				cell := r.Cells[s][m]
				by := y + 16 + k*(barH+6)
				bw := 0
				if maxV > 0 && len(cell.Values) > 0 {
					bw = int(float64(cellW-valueW-20) * cell.Median / maxV)
				}
				fillRect(img, x, by, max(bw, 1), barH, colSys[s])
				drawText(img, x+bw+6, by+2, cellStr(cell), scale, colText)
			}
		}
	}
	fillRect(img, margin, y0+len(rep.Rows)*cellH, w-2*margin, 1, colGrid)
	drawText(img, margin, y0+len(rep.Rows)*cellH+12,
		"bars in a cell are scaled to the larger of the two. throughput: higher is better; latency, RSS, restart: lower is better", 1, colText)

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func fillRect(img *image.RGBA, x, y, w, h int, c color.Color) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}
