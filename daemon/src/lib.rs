pub mod openclaw;
