package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// outputFormats are the values of -o.
var outputFormats = []string{"json", "yaml"}

// addOutputFlag registers -o (--output) on a command that reports.
func addOutputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", "", "Output format: json or yaml, a "+report.APIVersion+" object (default: tables)")
}

func validateOutput(output string) error {
	if output != "" && !contains(outputFormats, output) {
		return fmt.Errorf("--output must be json or yaml, got %q", output)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// printObject prints a report as JSON or YAML.
func printObject(out io.Writer, format string, obj any) error {
	var data []byte
	var err error
	if format == "json" {
		data, err = json.MarshalIndent(obj, "", "  ")
		data = append(data, '\n')
	} else {
		data, err = yaml.Marshal(obj)
	}
	if err != nil {
		return err
	}
	_, err = out.Write(data)
	return err
}

// printReport prints a read-only command's report as -o asks (format),
// or, without -o, as the tables prints it.
func printReport(out io.Writer, format string, rep any, tables func()) error {
	if format != "" {
		return printObject(out, format, rep)
	}
	tables()
	return nil
}

// printRun prints the report of a rotation, rollback or recover, also when
// the run failed part-way (then it says what was done): with -o the object
// of the given kind on out, else tables; notes and the run's ID go to errOut
// for people either way. It returns runErr, joined with a failure to print.
func printRun(out, errOut io.Writer, format, kind string, rep *orchestrator.Report, runErr error) error {
	if rep == nil {
		return runErr
	}
	for _, n := range notes(rep) {
		fmt.Fprintln(errOut, "note: "+n)
	}
	if format != "" {
		if err := printObject(out, format, toReport(kind, rep, runErr)); err != nil {
			return errors.Join(runErr, err)
		}
	} else if kind == report.KindRollback {
		printRollbackTable(out, rep)
	} else {
		printRotationTable(out, rep)
	}
	switch {
	case rep.DryRun:
		fmt.Fprintln(errOut, "dry run: nothing was changed")
	case kind != report.KindRollback && rep.Run != "" && len(rep.Rows) > 0:
		fmt.Fprintf(errOut, "run %s: the nodes keep backups of the replaced files; undo it with: kubectl rotate-certs rollback --run %s\n", rep.Run, rep.Run)
	}
	return runErr
}

// notes are the run's notes, then the nodes' (a note several nodes share
// is said once, naming them), then where each node backed its files up.
func notes(rep *orchestrator.Report) []string {
	out := append([]string{}, rep.Notes...)
	var texts []string
	nodes := map[string][]string{}
	for _, n := range rep.Nodes {
		for _, note := range n.Notes {
			if nodes[note] == nil {
				texts = append(texts, note)
			}
			nodes[note] = append(nodes[note], n.Node)
		}
	}
	for _, t := range texts {
		out = append(out, fmt.Sprintf("node %s: %s", strings.Join(nodes[t], ", "), t))
	}
	for _, n := range rep.Nodes {
		for _, b := range n.Backups {
			out = append(out, fmt.Sprintf("node %s: previous files backed up in %s/%s", n.Node, orchestrator.BackupDir, b))
		}
	}
	return out
}

func printRotationTable(out io.Writer, rep *orchestrator.Report) {
	if len(rep.Rows) == 0 {
		return
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if rep.DryRun {
		fmt.Fprintln(w, "NODE\tCERTIFICATE\tPATH\tSERIAL\tEXPIRES")
		for _, r := range rep.Rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Node, r.Certificate, r.Path, r.OldSerial, r.OldNotAfter.Format(time.RFC3339))
		}
	} else {
		fmt.Fprintln(w, "NODE\tCERTIFICATE\tOLD SERIAL -> NEW SERIAL\tOLD EXPIRY -> NEW EXPIRY")
		for _, r := range rep.Rows {
			fmt.Fprintf(w, "%s\t%s\t%s -> %s\t%s -> %s\n", r.Node, r.Certificate, shortSerial(r.OldSerial), shortSerial(r.NewSerial),
				r.OldNotAfter.Format(time.RFC3339), r.NewNotAfter.Format(time.RFC3339))
		}
	}
	w.Flush()
}

func printRollbackTable(out io.Writer, rep *orchestrator.Report) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if rep.DryRun {
		fmt.Fprintln(w, "NODE\tRUN\tFILE TO RESTORE")
		for _, n := range rep.Nodes {
			for _, p := range n.Restore {
				fmt.Fprintf(w, "%s\t%s\t%s\n", n.Node, rep.RolledBack, p)
			}
		}
	} else if len(rep.Rows) > 0 {
		fmt.Fprintln(w, "NODE\tCERTIFICATE\tRESTORED SERIAL\tEXPIRES")
		for _, r := range rep.Rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Node, r.Certificate, shortSerial(r.NewSerial), r.NewNotAfter.Format(time.RFC3339))
		}
	}
	w.Flush()
}

// shortSerial keeps tables readable; serials are decimal and long.
func shortSerial(s string) string {
	if len(s) > 12 {
		return s[:6] + "…" + s[len(s)-5:]
	}
	return s
}

// toReport is the machine-readable form of what the orchestrator recorded.
func toReport(kind string, rep *orchestrator.Report, runErr error) *report.RotationReport {
	out := report.NewRotationReport(kind)
	out.RunID, out.DryRun, out.RolledBackRun, out.User, out.Notes = rep.Run, rep.DryRun, rep.RolledBack, rep.User, rep.Notes
	out.Result = report.Succeeded
	if runErr != nil {
		out.Result, out.Error = report.Failed, runErr.Error()
		if errors.Is(runErr, orchestrator.ErrInterrupted) || errors.Is(runErr, context.Canceled) {
			out.Result = report.Interrupted
		}
	}
	index := map[string]int{}
	node := func(name string, controlPlane bool) *report.NodeReport {
		i, ok := index[name]
		if !ok {
			i = len(out.Nodes)
			index[name] = i
			out.Nodes = append(out.Nodes, report.NodeReport{Name: name, ControlPlane: controlPlane, Certificates: []report.Certificate{}})
		}
		return &out.Nodes[i]
	}
	for _, n := range rep.Nodes {
		nr := node(n.Node, n.ControlPlane)
		nr.FilesToRestore = append([]string(nil), n.Restore...)
		nr.Verified = append([]string(nil), n.Verified...)
		nr.Backups = append([]string(nil), n.Backups...)
		nr.Notes = append([]string(nil), n.Notes...)
		for _, s := range n.Restarted {
			nr.Restarted = append(nr.Restarted, report.Restart{Component: s.Component, OldPID: s.OldPID, NewPID: s.NewPID, DowntimeSeconds: s.Seconds})
		}
		if f := n.Failure; f != nil {
			nr.Failure = &report.Failure{Step: string(f.Step), Outcome: f.Outcome, Message: f.Message}
		}
	}
	for _, r := range rep.Rows {
		nr := node(r.Node, false)
		nr.Certificates = append(nr.Certificates, report.Certificate{Name: r.Certificate, Path: r.Path, OldSerial: r.OldSerial, NewSerial: r.NewSerial,
			OldNotAfter: utc(r.OldNotAfter), NewNotAfter: utc(r.NewNotAfter), CappedToCA: r.CappedToCA})
	}
	return out
}

// utc is t in UTC, nil when unset.
func utc(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}
