// Command benchreport renders docs/benchmarks.md and the HA timeline
// (docs/benchmarks/timeline-ha.svg) from the JSON that `make bench` wrote to
// docs/benchmarks/, keeping the document's hand-written analysis:
//
//	go run ./test/bench/cmd/benchreport [-dir docs/benchmarks] [-doc docs/benchmarks.md]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rotate-certs/kubectl-rotate-certs/test/bench/report"
)

func main() {
	dir := flag.String("dir", "docs/benchmarks", "folder of the JSON results; the SVG is written there")
	doc := flag.String("doc", "docs/benchmarks.md", "the document to write")
	png := flag.Bool("png", false, "also write the timeline as a PNG beside the SVG (not committed)")
	flag.Parse()
	if err := run(*dir, *doc, *png); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(dir, doc string, png bool) error {
	var runs []*report.Run
	for _, key := range []string{"single", "ha"} {
		var r report.Run
		err := readJSON(filepath.Join(dir, key+".json"), &r)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if len(r.Summaries) == 0 {
			r.Summaries = report.Summarize(&r)
		}
		runs = append(runs, &r)
	}
	var fp *report.Footprint
	var f report.Footprint
	if err := readJSON(filepath.Join(dir, "footprint.json"), &f); err == nil {
		fp = &f
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(runs) == 0 && fp == nil {
		return fmt.Errorf("no results in %s", dir)
	}
	timeline := ""
	for _, r := range runs {
		if r.Cluster.Key != "ha" {
			continue
		}
		var buf bytes.Buffer
		if err := report.WriteTimeline(&buf, r); err != nil {
			return err
		}
		svg := filepath.Join(dir, "timeline-ha.svg")
		if err := os.WriteFile(svg, buf.Bytes(), 0o644); err != nil {
			return err
		}
		rel, err := filepath.Rel(filepath.Dir(doc), svg)
		if err != nil {
			return err
		}
		timeline = filepath.ToSlash(rel)
		fmt.Fprintf(os.Stderr, "benchreport: wrote %s\n", svg)
		if png {
			buf.Reset()
			if err := report.WriteTimelinePNG(&buf, r); err != nil {
				return err
			}
			path := filepath.Join(dir, "timeline-ha.png")
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "benchreport: wrote %s\n", path)
		}
	}
	old, err := os.ReadFile(doc)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	md := report.Markdown(runs, fp, report.Preserved(string(old)), timeline)
	if err := os.WriteFile(doc, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "benchreport: wrote %s\n", doc)
	return nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
