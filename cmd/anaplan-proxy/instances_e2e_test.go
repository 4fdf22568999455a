package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// unitInstance is what systemd gives one instance of the template unit
// deploy/systemd/anaplan-proxy@.service: its command line, its environment
// and its state directory, with /etc/anaplan-proxy and /var/lib moved under
// root.
type unitInstance struct {
	args     []string // after the binary
	environ  []string // Environment= and STATE_DIRECTORY
	stateDir string
}

// readTemplateUnit reads the template unit as systemd would start instance
// name, and creates the state directory as StateDirectory= does (0700).
func readTemplateUnit(t *testing.T, name, root string) unitInstance {
	t.Helper()
	f, err := os.Open("../../deploy/systemd/anaplan-proxy@.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var u unitInstance
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.ReplaceAll(line, "%i", name)
		line = strings.ReplaceAll(line, "/etc/anaplan-proxy/", filepath.Join(root, "etc", "anaplan-proxy")+"/")
		key, value, _ := strings.Cut(line, "=")
		switch key {
		case "Environment":
			u.environ = append(u.environ, value)
		case "StateDirectory":
			u.stateDir = filepath.Join(root, "var", "lib", value)
		case "ExecStart":
			fields := strings.Fields(value)
			u.args = fields[1:]
		}
	}
	if u.stateDir == "" || len(u.args) == 0 || len(u.environ) == 0 {
		t.Fatalf("the template unit lacks StateDirectory=, ExecStart= or Environment=: %+v", u)
	}
	if err := os.MkdirAll(u.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	u.environ = append(u.environ, "STATE_DIRECTORY="+u.stateDir)
	return u
}

// TestTemplateUnitTwoInstances runs two instances of the template unit on one
// machine, a production and a test tenant each with its own config file,
// state directory and session, and shows that each script, pointed at its own
// instance with HTTPS_PROXY, gets its own tenant's token and cannot reach the
// other tenant's API.
func TestTemplateUnitTwoInstances(t *testing.T) {
	requireCurl(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc", "anaplan-proxy"), 0o755); err != nil {
		t.Fatal(err)
	}
	type instance struct {
		name string
		e    *env
		d    *daemon
	}
	var instances []*instance
	for _, name := range []string{"prod", "test"} {
		fake, err := anaplantest.Start(anaplantest.Options{Interval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fake.Close)
		u := readTemplateUnit(t, name, root)
		caFile, err := fake.WriteCAFile(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		configPath := filepath.Join(root, "etc", "anaplan-proxy", name+".yaml")
		// As the README shows: each instance names its state directory, so
		// that login, status and doctor run from a shell find its session.
		cfg := fakeConfig(fake, u.stateDir, caFile)
		if err := os.WriteFile(configPath, []byte(cfg), 0o640); err != nil {
			t.Fatal(err)
		}
		e := &env{t: t, fake: fake, dir: root, stateDir: u.stateDir, configPath: configPath}
		e.login()
		cmd := exec.Command(binPath, u.args...)
		cmd.Env = append(os.Environ(), u.environ...)
		instances = append(instances, &instance{name: name, e: e, d: e.serveCmd(cmd)})
	}
	prod, test := instances[0], instances[1]
	if prod.d.proxyAddr == test.d.proxyAddr || prod.e.stateDir == test.e.stateDir {
		t.Fatalf("the instances share a listener or a state directory: %s %s, %s %s", prod.d.proxyAddr, test.d.proxyAddr, prod.e.stateDir, test.e.stateDir)
	}

	for _, in := range instances {
		other := prod
		if in == prod {
			other = test
		}
		t.Run(in.name, func(t *testing.T) {
			exit, _, code, body := in.e.curl(in.d, in.e.fake.APIURL()+"/2/0/users/me")
			if exit != 0 || code != "200" {
				t.Fatalf("curl through %s: exit %d, HTTP %s: %s", in.name, exit, code, body)
			}
			got := strings.TrimPrefix(lastAPICall(t, in.e.fake).Authorization, "AnaplanAuthToken ")
			if !slices.Contains(in.e.fake.IssuedSecrets(), got) {
				t.Errorf("%s's API received a token its own tenant did not issue", in.name)
			}
			if slices.Contains(other.e.fake.IssuedSecrets(), got) {
				t.Errorf("%s's API received the %s tenant's token", in.name, other.name)
			}
			in.e.storedSession() // its own session.json, in its own state directory
			own, _ := os.ReadFile(filepath.Join(in.e.stateDir, "ca.crt"))
			others, _ := os.ReadFile(filepath.Join(other.e.stateDir, "ca.crt"))
			if len(own) == 0 || string(own) == string(others) {
				t.Errorf("%s has no CA of its own in %s", in.name, in.e.stateDir)
			}
			// The other tenant's API is not an inject host here: refused,
			// never sent this instance's token.
			before := len(other.e.fake.Calls())
			_, connect, _, _ := in.e.curl(in.d, other.e.fake.APIURL()+"/2/0/users/me")
			if connect != "403" {
				t.Errorf("CONNECT to the %s tenant through %s answered %s, want 403", other.name, in.name, connect)
			}
			if n := len(other.e.fake.Calls()); n != before {
				t.Errorf("the %s tenant received %d calls through the %s instance", other.name, n-before, in.name)
			}
		})
	}
	for _, in := range instances {
		in.d.stop(t)
		in.e.assertNoSecrets()
	}
}
