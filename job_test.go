package tandem

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestValidateUserName(t *testing.T) {
	for _, name := range []string{"nobody", "_apt", "www-data", "john.doe", "alice@corp.example", "Admin", "u1", "build$"} {
		if err := ValidateUserName(name); err != nil {
			t.Errorf("ValidateUserName(%q) = %v, want nil", name, err)
		}
	}
	for _, tc := range []struct{ name, want string }{
		{"", "empty"},
		{strings.Repeat("a", MaxUserLen+1), "limit"},
		{"0", "number"},
		{"65534", "number"},
		{"-rf", "'-'"},
		{".", "not a user name"},
		{"..", "not a user name"},
		{"a b", "white space"},
		{"a:b", "':'"},
		{"../etc", "'/'"},
		{"a,b", "','"},
		{"a\nb", "control"},
		{"a\x00b", "control"},
		{"\xff", "UTF-8"},
	} {
		err := ValidateUserName(tc.name)
		if err == nil || ErrorCode(err) != EINVALID || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateUserName(%q) = %v, want an EINVALID error mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestJobSpecValidatesUser(t *testing.T) {
	spec := JobSpec{Command: []string{"true"}}
	if err := spec.Validate(); err != nil {
		t.Fatalf("no user: got %v, want nil", err)
	}
	spec.User = "nobody"
	if err := spec.Validate(); err != nil {
		t.Fatalf("user nobody: got %v, want nil", err)
	}
	spec.User = "no body"
	if err := spec.Validate(); err == nil || ErrorCode(err) != EINVALID {
		t.Fatalf("user %q: got %v, want EINVALID", spec.User, err)
	}
}

// A spec without a user encodes, and so hashes, as it did before the field
// existed, so idempotent retries of jobs submitted by older clients match.
func TestJobSpecWithoutUserEncodesNoUser(t *testing.T) {
	spec := JobSpec{Command: []string{"true"}}
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"user"`) {
		t.Fatalf("spec without a user encodes as %s, want no user field", b)
	}
	before := spec.Hash()
	spec.User = "nobody"
	if spec.Hash() == before {
		t.Fatal("naming a user did not change the spec's hash")
	}
}
