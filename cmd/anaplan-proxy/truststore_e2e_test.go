package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anaplan-proxy/anaplan-proxy/internal/anaplantest"
)

// TestJavaTrustStoreFromCA: the truststore that `anaplan-proxy ca --pkcs12
// FILE` writes is all a Java client needs to trust the proxy, with no
// password and nothing imported into the JVM's cacerts; without it the
// same client refuses the proxy's certificates.
func TestJavaTrustStoreFromCA(t *testing.T) {
	requireJava(t)
	e := newEnv(t, anaplantest.Options{})
	d, _ := e.startForClients()
	store := filepath.Join(t.TempDir(), "anaplan-proxy.p12")
	code, out, errOut := e.command("ca", "--pkcs12", store)
	if code != 0 || out != "" {
		t.Fatalf("anaplan-proxy ca --pkcs12: exit %d, stdout %q\n%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "-Djavax.net.ssl.trustStore="+store) || !strings.Contains(errOut, "never import it") {
		t.Errorf("ca --pkcs12 did not say how to use the truststore:\n%s", errOut)
	}
	if fi, err := os.Stat(store); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("truststore: %v %v, want a file with mode 0644", fi, err)
	}
	host, port, err := net.SplitHostPort(d.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	proxyOpts := []string{"-Dhttps.proxyHost=" + host, "-Dhttps.proxyPort=" + port, "-Dhttp.nonProxyHosts="}
	url := e.fake.APIURL() + "/2/0/users/me"

	before := e.injectedCalls()
	code, got := e.runJava(javaClient, append([]string{"-Djavax.net.ssl.trustStore=" + store, "-Djavax.net.ssl.trustStoreType=PKCS12"}, proxyOpts...), url, host, port)
	if code != 0 {
		t.Fatalf("java exited %d:\n%s", code, got)
	}
	for _, mode := range []string{"explicit", "properties"} {
		if !strings.Contains(got, mode+" 200\n") {
			t.Errorf("%s: no 200 through the proxy with the truststore:\n%s", mode, got)
		}
	}
	if n := e.injectedCalls() - before; n != 2 {
		t.Errorf("the fake API saw %d requests with the stored token, want 2", n)
	}

	// The JVM's own cacerts does not hold the proxy's CA.
	code, got = e.runJava(javaClient, proxyOpts, url, host, port)
	if code != 0 || !strings.Contains(got, "explicit error") || strings.Contains(got, " 200\n") {
		t.Errorf("without the truststore java exited %d, want both requests to fail the TLS check:\n%s", code, got)
	}
	d.stop(t)
	e.assertNoSecrets()
}
