package report

import (
	"encoding/json"
	"fmt"
	"math"
)

// MarshalJSON writes a request as [start, latency, write, code, server,
// connection, error]: times rounded to 0.1 ms, the error only when there is
// one.
func (r Request) MarshalJSON() ([]byte, error) {
	w := 0
	if r.Write {
		w = 1
	}
	v := []any{round(r.Start, 4), round(r.Latency, 4), w, r.Code, r.Server, r.Conn}
	if r.Err != "" {
		v = append(v, r.Err)
	}
	return json.Marshal(v)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Request) UnmarshalJSON(b []byte) error {
	var v []json.RawMessage
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if len(v) < 6 || len(v) > 7 {
		return fmt.Errorf("request: want 6 or 7 fields, got %d", len(v))
	}
	var w int
	for i, dst := range []any{&r.Start, &r.Latency, &w, &r.Code, &r.Server, &r.Conn} {
		if err := json.Unmarshal(v[i], dst); err != nil {
			return fmt.Errorf("request field %d: %w", i, err)
		}
	}
	r.Write = w == 1
	r.Err = ""
	if len(v) == 7 {
		if err := json.Unmarshal(v[6], &r.Err); err != nil {
			return fmt.Errorf("request error: %w", err)
		}
	}
	return nil
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}
