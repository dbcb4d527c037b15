package workflow

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/tandemhq/tandem"
)

// MaxOutputBytes bounds the outputs file of one step attempt.
const MaxOutputBytes = tandem.MaxOutputBytes

// Render returns the job spec to submit for one attempt of a step: job (the
// step's Job) with every ${params.NAME} and ${steps.STEP.outputs.KEY} in its
// command arguments and env values replaced by the value from params or
// outputs (step name -> key -> value), and "$${" by "${". No other field is
// rendered. The result passes tandem.JobSpec.Validate.
//
// Validate has already refused references to parameters that do not exist
// and to steps that are not ancestors, so with a valid spec an error here
// means an ancestor finished without writing the output a step needs (or a
// value would make the job invalid): the attempt cannot run, and the
// controller should record it failed with the error as its reason. Errors
// are EINVALID *tandem.Error values naming the field and the reference.
func Render(job json.RawMessage, params map[string]string, outputs map[string]map[string]string) (tandem.JobSpec, error) {
	js, err := decodeJob(job)
	if err != nil {
		return js, err
	}
	render := func(field, s string) (string, error) {
		t, err := parseTemplate(s)
		if err != nil {
			return "", invalid("job %s: %v", field, err)
		}
		var b strings.Builder
		for _, seg := range t {
			if seg.literal {
				b.WriteString(seg.text)
				continue
			}
			v, err := resolve(seg.ref, params, outputs)
			if err != nil {
				return "", invalid("job %s: %v", field, err)
			}
			b.WriteString(v)
		}
		return b.String(), nil
	}
	// The decoded slices and maps are our own, so they may be rewritten in place.
	for i, a := range js.Command {
		if js.Command[i], err = render(fmt.Sprintf("command[%d]", i), a); err != nil {
			return js, err
		}
	}
	for _, k := range sortedKeys(js.Env) {
		if js.Env[k], err = render("env "+k, js.Env[k]); err != nil {
			return js, err
		}
	}
	if err := js.Validate(); err != nil {
		return js, prefix("rendered job", err)
	}
	return js, nil
}

func resolve(r ref, params map[string]string, outputs map[string]map[string]string) (string, error) {
	switch r.kind {
	case refParam:
		v, ok := params[r.key]
		if !ok {
			return "", fmt.Errorf("${%s}: there is no param %q", r, r.key)
		}
		return v, nil
	case refOutput:
		v, ok := outputs[r.step][r.key]
		if !ok {
			return "", fmt.Errorf("${%s}: step %q has no output %q", r, r.step, r.key)
		}
		return v, nil
	}
	return "", fmt.Errorf("${%s} cannot be used in a job", r)
}

// ParseOutputs parses the outputs file a step attempt writes: at most
// MaxOutputBytes of UTF-8 text, one KEY=VALUE per line. A line ends at "\n"
// (a "\r" before it is dropped); blank lines and lines whose first character
// is '#' are ignored. KEY is 1 to MaxKeyLen bytes of letters, digits, '_'
// and '-', starting with a letter or '_'; VALUE is everything after the
// first '=', unchanged (no quoting, no trimming, no NUL). A key may appear
// once. Errors are EINVALID *tandem.Error values that give the line number.
func ParseOutputs(b []byte) (map[string]string, error) {
	if len(b) > MaxOutputBytes {
		return nil, invalid("outputs are %d bytes, more than the limit of %d", len(b), MaxOutputBytes)
	}
	if !utf8.Valid(b) {
		return nil, invalid("outputs are not valid UTF-8")
	}
	out := make(map[string]string)
	first := make(map[string]int)
	for n, line := range bytes.Split(b, []byte("\n")) {
		no := n + 1
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(bytes.TrimSpace(line)) == 0 || line[0] == '#' {
			continue
		}
		k, v, ok := bytes.Cut(line, []byte("="))
		key := string(k)
		switch {
		case !ok:
			return nil, invalid("outputs line %d: %q is not KEY=VALUE", no, truncate(string(line)))
		case !validKey(key):
			return nil, invalid("outputs line %d: key %q is invalid: use 1 to %d bytes of %s", no, truncate(key), MaxKeyLen, keySyntax)
		case bytes.IndexByte(v, 0) >= 0:
			return nil, invalid("outputs line %d: the value of %s contains a NUL byte", no, key)
		}
		if prev, dup := first[key]; dup {
			return nil, invalid("outputs line %d: key %s is set again (first on line %d): write each key once", no, key, prev)
		}
		first[key] = no
		out[key] = string(v)
	}
	return out, nil
}

// CheckOutputs reports whether outputs, as an agent reports them, could
// have come from ParseOutputs: valid keys, values without NUL or newline,
// valid UTF-8, and at most MaxOutputBytes once written as KEY=VALUE lines.
func CheckOutputs(outputs map[string]string) error {
	size := 0
	for _, k := range sortedKeys(outputs) {
		v := outputs[k]
		switch {
		case !validKey(k):
			return invalid("output key %q is invalid: use 1 to %d bytes of %s", truncate(k), MaxKeyLen, keySyntax)
		case !utf8.ValidString(v) || strings.ContainsAny(v, "\x00\n"):
			return invalid("the value of output %s is not one line of UTF-8 without NUL", k)
		}
		size += len(k) + len(v) + 2
	}
	if size > MaxOutputBytes {
		return invalid("outputs are %d bytes, more than the limit of %d", size, MaxOutputBytes)
	}
	return nil
}

func truncate(s string) string {
	const limit = 80
	if len(s) <= limit {
		return s
	}
	for i := limit; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i] + "..."
		}
	}
	return s[:limit] + "..."
}
