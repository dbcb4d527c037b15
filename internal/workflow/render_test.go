package workflow

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/tandemhq/tandem"
)

func TestRender(t *testing.T) {
	job := json.RawMessage(`{
		"name": "load ${params.date}",
		"command": ["load", "--file=${steps.extract.outputs.file}", "${ params.date }", "$${params.date}", "$HOME", "a$b", "$$", "${params.date}${params.date}"],
		"env": {"TARGET": "${params.env}/${steps.extract.outputs.rows}", "PLAIN": "x"},
		"labels": {"l": "${params.env}"}
	}`)
	params := map[string]string{"date": "2026-11-30", "env": "prod"}
	outputs := map[string]map[string]string{"extract": {"file": "/tmp/x y", "rows": "12"}}
	got, err := Render(job, params, outputs)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	wantCmd := []string{"load", "--file=/tmp/x y", "2026-11-30", "${params.date}", "$HOME", "a$b", "$$", "2026-11-302026-11-30"}
	if !reflect.DeepEqual(got.Command, wantCmd) {
		t.Errorf("command: got %q, want %q", got.Command, wantCmd)
	}
	wantEnv := map[string]string{"TARGET": "prod/12", "PLAIN": "x"}
	if !reflect.DeepEqual(got.Env, wantEnv) {
		t.Errorf("env: got %q, want %q", got.Env, wantEnv)
	}
	// Only the command and env values are rendered.
	if got.Name != "load ${params.date}" || got.Labels["l"] != "${params.env}" {
		t.Errorf("name and labels: got %q and %q, want them unchanged", got.Name, got.Labels["l"])
	}
}

func TestRenderErrors(t *testing.T) {
	params := map[string]string{"p": "x", "empty": ""}
	outputs := map[string]map[string]string{"a": {"k": "v", "nul": "a\x00b"}}
	tests := []struct{ job, want string }{
		{`{"command": ["x", "${steps.a.outputs.nope}"]}`, `job command[1]: ${steps.a.outputs.nope}: step "a" has no output "nope"`},
		{`{"command": ["x", "${steps.b.outputs.k}"]}`, `job command[1]: ${steps.b.outputs.k}: step "b" has no output "k"`},
		{`{"command": ["x"], "env": {"E": "${params.q}"}}`, `job env E: ${params.q}: there is no param "q"`},
		{`{"command": ["${params.empty}"]}`, `rendered job: command[0] is empty: it must name the program to run`},
		{`{"command": ["x", "${steps.a.outputs.nul}"]}`, `rendered job: command[1] contains a NUL byte`},
		{`{"command": ["x", "${oops"]}`, `job command[1]: ${ at byte 0 is not closed with }`},
		{`{"command": ["x"], "bogus": 1}`, `job is not a valid job spec: json: unknown field "bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.job, func(t *testing.T) {
			_, err := Render(json.RawMessage(tt.job), params, outputs)
			if err == nil {
				t.Fatalf("got no error, want %q", tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("got %q, want %q", err, tt.want)
			}
			var te *tandem.Error
			if !errors.As(err, &te) || te.Code != tandem.EINVALID {
				t.Errorf("got %#v, want code %s", err, tandem.EINVALID)
			}
			// The API shows the message of the first *tandem.Error: it
			// must be the whole message.
			if got := tandem.ErrorMessage(err); got != err.Error() {
				t.Errorf("the API would show %q, want %q", got, err)
			}
		})
	}
}

func TestParseOutputs(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]string
	}{
		{"empty", "", map[string]string{}},
		{"one", "k=v\n", map[string]string{"k": "v"}},
		{"no final newline", "k=v", map[string]string{"k": "v"}},
		{"crlf", "a=1\r\nb=2\r\n", map[string]string{"a": "1", "b": "2"}},
		{"value kept as is", "k= spaced = and=equals \n", map[string]string{"k": " spaced = and=equals "}},
		{"empty value", "k=\n", map[string]string{"k": ""}},
		{"comments and blanks", "# header\n\n  \nrows=12\n#x=y\n", map[string]string{"rows": "12"}},
		{"key syntax", "_a-b_9=1\nA=2\n", map[string]string{"_a-b_9": "1", "A": "2"}},
		{"utf-8 value", "msg=héllo ✓\n", map[string]string{"msg": "héllo ✓"}},
		{"exactly the limit", "k=" + strings.Repeat("x", MaxOutputBytes-2), map[string]string{"k": strings.Repeat("x", MaxOutputBytes-2)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOutputs([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseOutputs: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseOutputsErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"oversized", "k=" + strings.Repeat("x", MaxOutputBytes-1), "outputs are 4097 bytes, more than the limit of 4096"},
		{"no equals", "ok=1\njust text\n", `outputs line 2: "just text" is not KEY=VALUE`},
		{"empty key", "=v\n", `outputs line 1: key "" is invalid: use 1 to 64 bytes of letters, digits, '_' and '-', starting with a letter or '_'`},
		{"key with space", "my key=v\n", `outputs line 1: key "my key" is invalid`},
		{"key starts with digit", "1k=v\n", `outputs line 1: key "1k" is invalid`},
		{"key with dot", "a.b=v\n", `outputs line 1: key "a.b" is invalid`},
		{"long key", strings.Repeat("k", 65) + "=v\n", `outputs line 1: key "` + strings.Repeat("k", 65) + `" is invalid`},
		{"duplicate", "a=1\nb=2\na=3\n", "outputs line 3: key a is set again (first on line 1): write each key once"},
		{"nul", "a=x\x00y\n", "outputs line 1: the value of a contains a NUL byte"},
		{"not utf-8", "a=\xff\n", "outputs are not valid UTF-8"},
		{"long line truncated", strings.Repeat("z", 200), `outputs line 1: "` + strings.Repeat("z", 80) + `..." is not KEY=VALUE`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOutputs([]byte(tt.in))
			if err == nil {
				t.Fatalf("got %q and no error, want %q", got, tt.want)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("got %q, want it to start with %q", err, tt.want)
			}
			if got != nil {
				t.Errorf("got outputs %q with the error, want none", got)
			}
		})
	}
}
