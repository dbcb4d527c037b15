package main

import "testing"

func TestFormatting(t *testing.T) {
	ms := 0.0015
	tests := []struct {
		name, got, want string
	}{
		{"plain command", fmtCommand([]string{"ls", "-l", "/tmp/a_b.c"}), "ls -l /tmp/a_b.c"},
		{"spaces quoted", fmtCommand([]string{"echo", "a b"}), "echo 'a b'"},
		{"quote escaped", fmtCommand([]string{"echo", "it's"}), `echo 'it'\''s'`},
		{"empty arg", fmtCommand([]string{"printf", ""}), "printf ''"},
		{"short kept", truncate("abc", 3), "abc"},
		{"long cut", truncate("abcdef", 4), "abc…"},
		{"runes counted", truncate("ééééé", 3), "éé…"},
		{"seconds to ms", fmtSeconds(&ms), "1.5ms"},
		{"nil seconds", fmtSeconds(nil), "-"},
		{"pairs sorted", fmtPairs(map[string]string{"b": "2", "a": "1"}), "a=1 b=2"},
		{"no pairs", fmtPairs(nil), "-"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestOutputFlag(t *testing.T) {
	for _, tt := range []struct {
		in      string
		wantErr bool
	}{{"table", false}, {"json", false}, {"yaml", true}, {"", true}, {"JSON", true}} {
		var o outputFormat
		if err := o.Set(tt.in); (err != nil) != tt.wantErr {
			t.Errorf("Set(%q): got error %v, want error %v", tt.in, err, tt.wantErr)
		}
	}
}
